"""A Kedro session run of the whole default pipeline on a tiny model, offline."""

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

from grao_pipeline.io import HFModelDataset

ROOT = Path(__file__).resolve().parents[2]

TINY_RUN = {
    "sft": {"steps": 2, "batch_size": 2, "mixed_precision": "fp32", "show_progress": False},
    "grao": {"steps": 2, "prompts_per_step": 2, "num_generations": 2, "max_completion_tokens": 6,
             "checkpoint_every": 1, "mixed_precision": "fp32", "show_progress": False},
    "evaluation": {"num_prompts": 4, "max_new_tokens": 6, "batch_size": 4,
                   "bootstrap_resamples": 200},
}


@pytest.fixture
def project(tmp_path, tiny, monkeypatch):
    """A copy of the project's conf/ whose starting policy is a tiny saved model."""
    shutil.copytree(ROOT / "conf", tmp_path / "conf", ignore=shutil.ignore_patterns("local"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(ROOT / "src", tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (tmp_path / "conf" / "local").mkdir()
    HFModelDataset(path=str(tmp_path / "tiny_base")).save(tiny)
    (tmp_path / "conf" / "local" / "catalog.yml").write_text(
        f"base_model_source:\n  type: grao_pipeline.io.HFModelDataset\n  path: {tmp_path / 'tiny_base'}\n")
    monkeypatch.chdir(tmp_path)  # the catalog's relative data/ paths resolve here
    bootstrap_project(tmp_path)
    return tmp_path


def run(project, pipeline_names=None, runtime_params=TINY_RUN):
    with KedroSession.create(project_path=project, runtime_params=runtime_params) as session:
        session.run(pipeline_names=pipeline_names)


@pytest.mark.slow
def test_default_pipeline_runs_end_to_end(project):
    run(project)
    metrics = json.loads((project / "data/08_reporting/evaluation_metrics.json").read_text())
    assert set(metrics) == {"base", "sft", "grao", "reference"}
    for label in ("base", "sft", "grao"):
        for name in ("mean_reward", "ras", "win_vs_reference", "tie_vs_reference", "loss_vs_reference",
                     "nag", "net_win_vs_start", "kl_from_start", "response_length"):
            m = metrics[label][name]
            assert set(m) == {"value", "ci_low", "ci_high"}
            assert m["ci_low"] - 1e-9 <= m["value"] <= m["ci_high"] + 1e-9
        wtl = sum(metrics[label][f"{k}_vs_reference"]["value"] for k in ("win", "tie", "loss"))
        assert wtl == pytest.approx(1.0)
    assert metrics["base"]["kl_from_start"]["value"] == 0.0
    assert metrics["grao"]["kl_from_start"]["value"] > 0.0

    log = pd.read_csv(project / "data/08_reporting/grao_training_log.csv")
    assert list(log["step"]) == [1, 2]
    for name in ("evaluation.png", "grao_training_curves.png", "sft_training_curves.png",
                 "data_report.json"):
        assert (project / "data/08_reporting" / name).stat().st_size > 0
    for model in ("base", "sft", "grao"):
        assert (project / "data/06_models" / model / "model.safetensors").is_file()
    completions = pd.read_json(project / "data/07_model_output/evaluation_completions.jsonl", lines=True)
    assert len(completions) == 12 and set(completions["model"]) == {"base", "sft", "grao"}
    assert (project / "data/06_models/checkpoints/grao/step-000002").is_dir()


@pytest.mark.slow
def test_bad_parameter_is_refused_before_anything_runs(project):
    bad = {**TINY_RUN, "grao": {**TINY_RUN["grao"], "num_generations": 1}}
    with pytest.raises(Exception, match="G must be >= 2"):
        run(project, ["grao"], bad)
    assert not (project / "data/06_models/grao").exists()
