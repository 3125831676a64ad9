"""A ``kedro run`` killed at three points (and SIGTERMed) ends, when the same command is
run again, with the weights and training log of an uninterrupted run."""

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from safetensors.torch import load_file

from grao_pipeline.io import HFModelDataset
from tests.fixtures import gpt2_tokenizer, seed_reward_models, tiny_model
from tests.pipelines.conftest import ROOT, TINY_RUN

KILL_AT = Path(__file__).with_name("kill_at.py")
PARAMS = {**TINY_RUN, "grao": {**TINY_RUN["grao"], "steps": 4, "checkpoint_every": 2}}
COMMAND = ["run", "--pipelines", "grao"]


def run(project: Path, point: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    args = [str(KILL_AT), point, *COMMAND] if point else ["-m", "kedro", *COMMAND]
    return subprocess.run([sys.executable, *args], cwd=project, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def trained_sft(tmp_path_factory):
    """A project whose data and SFT model exist, ready for ``kedro run --pipelines grao``."""
    project = tmp_path_factory.mktemp("project")
    for item in ("conf", "src"):
        shutil.copytree(ROOT / item, project / item,
                        ignore=shutil.ignore_patterns("local", "__pycache__", "*.egg-info"))
    shutil.copy(ROOT / "pyproject.toml", project / "pyproject.toml")
    (project / "conf/local").mkdir()
    tiny = tiny_model(gpt2_tokenizer(), seed=0)
    HFModelDataset(path=str(project / "tiny_base")).save(tiny)
    seed_reward_models(project, tiny)
    (project / "conf/local/catalog.yml").write_text(
        f"base_model_source:\n  type: grao_pipeline.io.HFModelDataset\n  path: {project / 'tiny_base'}\n")
    (project / "conf/local/parameters.yml").write_text(yaml.safe_dump(PARAMS))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "kedro", "run", "--pipelines", "data_processing,sft"],
                          cwd=project, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return project


@pytest.fixture(scope="module")
def uninterrupted(trained_sft, tmp_path_factory):
    project = tmp_path_factory.mktemp("uninterrupted")
    shutil.copytree(trained_sft, project, dirs_exist_ok=True)
    done = run(project)
    assert done.returncode == 0, done.stderr[-3000:]
    return project


def learnt(project: Path) -> tuple[dict, pd.DataFrame]:
    log = pd.read_csv(project / "data/08_reporting/grao_training_log.csv")
    return (load_file(project / "data/06_models/grao/model.safetensors"),
            log[[c for c in log.columns if not c.startswith("time/") and c != "tokens_per_sec"]])


@pytest.mark.slow
@pytest.mark.parametrize("point, exit_code, says", [
    ("mid-step", -signal.SIGKILL, None),
    ("mid-checkpoint-write", -signal.SIGKILL, None),
    ("mid-model-save", -signal.SIGKILL, None),
    ("sigterm-mid-step", 1, "grao: stopped by SIGTERM after step 3 of 4; checkpoint saved at"),
])
def test_rerunning_after_a_kill_equals_an_uninterrupted_run(trained_sft, uninterrupted, tmp_path,
                                                            point, exit_code, says):
    project = tmp_path / "project"
    shutil.copytree(trained_sft, project)
    killed = run(project, point)
    assert killed.returncode == exit_code, killed.stderr[-3000:]
    if says:
        assert says in " ".join((killed.stdout + killed.stderr).split())
    models = project / "data/06_models"
    if point == "mid-model-save":
        assert not (models / "grao").exists()  # the half-saved model never took the name
    rerun = run(project)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    weights, log = learnt(project)
    expected_weights, expected_log = learnt(uninterrupted)
    assert list(log["step"]) == [1, 2, 3, 4]
    pd.testing.assert_frame_equal(log, expected_log)
    assert weights.keys() == expected_weights.keys()
    for name, tensor in weights.items():
        assert tensor.equal(expected_weights[name]), name
    leftovers = [p.name for p in models.iterdir() if p.name.startswith(".")]
    leftovers += [p.name for p in (models / "checkpoints/grao").iterdir() if p.name.startswith(".tmp")]
    assert not leftovers
    if point == "mid-checkpoint-write":
        assert "removing the unfinished checkpoint" in " ".join((rerun.stdout + rerun.stderr).split())
