"""`dvc repro` / `dvc exp run` over the real dvc.yaml, in a temporary git repo, on a
tiny model: stages run, cache, and re-run exactly when their inputs change."""

import csv
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from grao_pipeline.io import HFModelDataset

ROOT = Path(__file__).resolve().parents[2]
TINY_PARAMS = {
    "parameters_sft.yml": {"steps": 1, "batch_size": 2, "mixed_precision": "fp32", "show_progress": False},
    "parameters_grao.yml": {"steps": 1, "prompts_per_step": 2, "num_generations": 2,
                            "max_completion_tokens": 6, "checkpoint_every": 0,
                            "mixed_precision": "fp32", "show_progress": False},
    "parameters_evaluation.yml": {"num_prompts": 4, "max_new_tokens": 6, "batch_size": 4,
                                  "bootstrap_resamples": 200},
    **{f"parameters_reward_model.yml:{role}_reward_model": {
        "conversation_prompts": 8, "batch_size": 8, "max_length": 48, "bootstrap_resamples": 200}
       for role in ("proxy", "gold")},
}


def set_params(repo: Path, filename: str, values: dict) -> None:
    """``filename`` or ``filename:section`` for a file of several sections."""
    filename, _, section = filename.partition(":")
    path = repo / "conf" / "base" / filename
    doc = yaml.safe_load(path.read_text())
    if not section:
        (section,) = doc
    doc[section].update(values)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def sh(repo: Path, *args: str) -> str:
    # wide: rich would wrap Kedro's log lines into columns
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "COLUMNS": "400"}
    done = subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


@pytest.fixture
def repo(tmp_path, tiny):
    repo = tmp_path / "repo"
    for item in ("conf", "src", "dvc.yaml", ".dvcignore", ".gitignore", "pyproject.toml"):
        src = ROOT / item
        if src.is_dir():
            shutil.copytree(src, repo / item,
                            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "local"))
        else:
            shutil.copy(src, repo / item)
    for name, values in TINY_PARAMS.items():
        set_params(repo, name, values)
    HFModelDataset(path=str(tmp_path / "tiny_base")).save(tiny)
    (repo / "conf" / "local").mkdir()
    (repo / "conf" / "local" / "catalog.yml").write_text(
        f"base_model_source:\n  type: grao_pipeline.io.HFModelDataset\n  path: {tmp_path / 'tiny_base'}\n")
    sh(repo, "git", "init", "-q")
    sh(repo, "git", "config", "user.email", "test@example.com")
    sh(repo, "git", "config", "user.name", "test")
    sh(repo, "dvc", "init", "-q")
    shutil.copy(ROOT / ".dvc" / "config", repo / ".dvc" / "config")  # the committed remote
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "init")
    return repo


@pytest.mark.slow
def test_a_killed_repro_resumes_caches_reruns_what_changed_and_shares_through_the_remote(repo, tmp_path):
    """The DVC life cycle on one repo, so that its stages run once (issue 33: the two
    tests this was before ran data, reward models and SFT twice): a `dvc repro` killed
    mid-GRAO resumes from its checkpoint without rerunning the finished stages; a rerun
    skips every stage; conf/local counts as a change; HEAD's outputs and then an
    experiment's reach a fresh clone through the committed remote; `dvc exp run -S`
    reruns exactly the stages downstream of the changed parameter."""
    stages = {"data_processing", "reward_models", "sft", "grao", "evaluation"}
    set_params(repo, "parameters_grao.yml", {"steps": 8, "checkpoint_every": 2})
    sh(repo, "git", "commit", "-qam", "8 grao steps")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "COLUMNS": "400"}
    killed_log = tmp_path / "killed.log"
    with killed_log.open("w") as out:
        first = subprocess.Popen(["dvc", "repro"], cwd=repo, env=env, start_new_session=True,
                                 stdout=out, stderr=subprocess.STDOUT)
        checkpoint = repo / "data/06_models/checkpoints/grao/step-000004"
        deadline = time.time() + 600
        while not checkpoint.exists():
            assert first.poll() is None and time.time() < deadline, "dvc repro ended before the kill"
            time.sleep(0.02)
        os.killpg(first.pid, signal.SIGKILL)  # dvc and the kedro run under it
        first.wait()
    assert ran(killed_log.read_text()) == stages - {"evaluation"}
    assert not (repo / "data/06_models/grao").exists()

    out = sh(repo, "dvc", "repro")
    assert re.search(r"grao: resumed from \S*step-00000[4-7]", out)
    assert ran(out) == {"grao", "evaluation"}, "the stages finished before the kill ran again"
    steps = [int(row["step"]) for row in csv.DictReader(
        (repo / "data/08_reporting/grao_training_log.csv").open())]
    assert steps == list(range(1, 9))
    assert (repo / "data/06_models/grao/model.safetensors").is_file()

    second = sh(repo, "dvc", "repro")
    assert ran(second) == set()
    assert all(f"Stage '{s}' didn't change, skipping" in second for s in stages)

    # issue 31, case 7: the stages read conf/local, so a change there is a change
    local = repo / "conf/local/parameters.yml"
    local.write_text(yaml.safe_dump({"grao": {"beta": 0.0}}))
    status = sh(repo, "dvc", "status")
    assert all(f"{s}:" in status for s in stages) and re.search(r"modified:\s+conf/local", status), status
    local.unlink()
    assert "up to date" in sh(repo, "dvc", "status")

    # HEAD's outputs, checkpoints included, reach a fresh clone through the committed remote
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "first run")
    sh(repo, "dvc", "push")
    clone = tmp_path / "clone"
    sh(tmp_path, "git", "clone", "-q", str(repo), str(clone))
    # conf/local is not in git, and the stages depend on it: the clone's user configures
    # the same local model, or `dvc status` rightly reports every stage as changed
    shutil.copytree(repo / "conf/local", clone / "conf/local", dirs_exist_ok=True)
    sh(clone, "dvc", "pull")
    assert "up to date" in sh(clone, "dvc", "status")
    assert (clone / "data/06_models/checkpoints/grao/step-000008/trainer_state.json").is_file()

    before = json.loads((repo / "data/08_reporting/evaluation_metrics.json").read_text())
    # -S writes the parameter into conf/base/parameters_grao.yml, then reproduces: a
    # changed parameters file reruns exactly the stages downstream of it
    exp = sh(repo, "dvc", "exp", "run", "-n", "lam0", "-S", "conf/base/parameters_grao.yml:grao.lam=0.0")
    assert ran(exp) == {"grao", "evaluation"}
    after = json.loads((repo / "data/08_reporting/evaluation_metrics.json").read_text())
    assert after["grao"] != before["grao"]
    diff = json.loads(sh(repo, "dvc", "metrics", "diff", "--json"))
    changed = diff["data/08_reporting/evaluation_metrics.json"]
    assert any(key.startswith("grao.") for key in changed)
    assert not any(key.startswith("base.") for key in changed)
    shown = list(csv.DictReader(io.StringIO(sh(repo, "dvc", "exp", "show", "--no-pager", "--csv"))))
    (lam_column,) = [c for c in shown[0] if c.endswith("grao.lam")]
    assert sorted({float(r[lam_column]) for r in shown if r[lam_column]}) == [0.0, 0.6]

    # the experiment is applied and committed through DVC's own commands, then shared
    sh(repo, "git", "reset", "-q", "--hard")
    sh(repo, "dvc", "checkout", "-q")
    sh(repo, "dvc", "exp", "apply", "lam0")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "lam 0")
    sh(repo, "dvc", "push")
    sh(clone, "git", "pull", "-q")
    sh(clone, "dvc", "pull")
    assert "up to date" in sh(clone, "dvc", "status")
    pulled = json.loads((clone / "data/08_reporting/evaluation_metrics.json").read_text())
    assert pulled == json.loads((repo / "data/08_reporting/evaluation_metrics.json").read_text())
    assert pulled == after


@pytest.mark.parametrize("stage, module", [("sft", "grao_pipeline.pipelines.sft"),
                                           ("grao", "grao_pipeline.pipelines.training"),
                                           ("evaluation", "grao_pipeline.pipelines.evaluation")])
def test_stages_depend_on_every_source_file_their_pipeline_imports(stage, module):
    """A change in any module a stage's code imports must invalidate its cached outputs."""
    code = ("import sys, " + module + "\n"
            "print('\\n'.join(m.__file__ for m in list(sys.modules.values())\n"
            "                 if (m.__name__ or '').startswith('grao_pipeline') and getattr(m, '__file__', None)))")
    files = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True).stdout.split()
    deps = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage]["deps"]
    uncovered = [f for f in (str(Path(f).relative_to(ROOT)) for f in files)
                 if f.startswith("src/") and not any(f == d or f.startswith(d.rstrip("/") + "/")
                                                     for d in deps)]
    uncovered = [f for f in uncovered if (ROOT / f).stat().st_size > 0]  # empty package markers
    assert not uncovered, f"dvc.yaml stage {stage!r} misses {uncovered}"
