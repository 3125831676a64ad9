"""A throw-away copy of the project whose starting policy is a tiny saved model, run
with a few tiny steps."""

import shutil
from pathlib import Path

import pytest
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

from grao_pipeline.io import HFModelDataset
from tests.fixtures import seed_reward_models

ROOT = Path(__file__).resolve().parents[2]

TINY_ROLLOUT = {"steps": 2, "prompts_per_step": 2, "num_generations": 2, "temperature": 1.0,
                "max_completion_tokens": 6, "learning_rate": 1e-4, "mixed_precision": "fp32",
                "show_progress": False}
TINY_RUN = {
    "sft": {"steps": 2, "batch_size": 2, "mixed_precision": "fp32", "show_progress": False},
    "grao": {**TINY_ROLLOUT, "checkpoint_every": 1},
    "grpo": TINY_ROLLOUT,
    "ppo": TINY_ROLLOUT,
    "sft_continued": {"steps": 2, "batch_size": 2, "max_completion_tokens": 6, "mixed_precision": "fp32",
                      "show_progress": False},
    "sft_grpo": {"phase_steps": [1, 1]},
    "dpo": {"steps": 2, "max_completion_tokens": 6, "mixed_precision": "fp32", "show_progress": False},
    "evaluation": {"num_prompts": 4, "max_new_tokens": 6, "batch_size": 4,
                   "bootstrap_resamples": 200, "curve_every": 1, "curve_prompts": 2},
    **{f"{role}_reward_model": {"conversation_prompts": 8, "batch_size": 8, "max_length": 48,
                                "bootstrap_resamples": 200} for role in ("proxy", "gold")},
}


@pytest.fixture
def project(tmp_path, tiny, monkeypatch):
    for item in ("conf", "src", "notebooks"):
        shutil.copytree(ROOT / item, tmp_path / item,
                        ignore=shutil.ignore_patterns("local", "__pycache__", "*.egg-info"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "conf" / "local").mkdir()
    HFModelDataset(path=str(tmp_path / "tiny_base")).save(tiny)
    seed_reward_models(tmp_path, tiny)  # conf/base trains against the proxy, judges with the gold
    (tmp_path / "conf" / "local" / "catalog.yml").write_text(
        f"base_model_source:\n  type: grao_pipeline.io.HFModelDataset\n  path: {tmp_path / 'tiny_base'}\n")
    monkeypatch.chdir(tmp_path)  # the catalog's relative data/ paths resolve here
    bootstrap_project(tmp_path)
    return tmp_path


def kedro_run(project, pipeline_names=None, runtime_params=TINY_RUN):
    with KedroSession.create(project_path=project, runtime_params=runtime_params) as session:
        session.run(pipeline_names=pipeline_names)
