"""A Kedro session run of the whole default pipeline on a tiny model, offline."""

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from .conftest import TINY_RUN, kedro_run


@pytest.mark.slow
def test_default_pipeline_runs_end_to_end(project, caplog):
    with caplog.at_level(logging.INFO, logger="grao_pipeline.hooks"):
        kedro_run(project)
    # NodeTimes: one line per node, in the order they ran, with its seconds
    took = re.findall(r"node (\S+) took (\d+\.\d) s", caplog.text)
    names = [name for name, _ in took]
    assert len(names) == len(set(names)) and {"train_sft", "train_grao", "answer_grao",
                                                "summarise_evaluation"} <= set(names), names
    assert names.index("train_sft") < names.index("train_grao") < names.index("answer_grao")
    assert float(dict(took)["train_grao"]) > 0
    metrics = json.loads((project / "data/08_reporting/evaluation_metrics.json").read_text())
    assert set(metrics) == {"base", "sft", "grao", "reference"}
    assert set(metrics["reference"]) == {"mean_reward", "echo_share", "repeat_share", "same_answer_share",
                                          "distinct_2", "gold_reward"}
    for label in ("base", "sft", "grao"):
        assert "win_vs_reference" not in metrics[label]  # one name per metric: ras
        # issue 32: the proxy (training) reward, the gold and the hacking diagnostics
        for name in ("mean_reward", "gold_reward", "gold_minus_training", "ras", "tie_vs_reference",
                     "loss_vs_reference", "nag", "net_win_vs_start", "kl_from_start",
                     "response_length", "echo_share", "empty_share", "repeat_share", "same_answer_share",
                     "frac_truncated"):
            m = metrics[label][name]
            assert set(m) == {"value", "ci_low", "ci_high"}
            assert m["ci_low"] - 1e-9 <= m["value"] <= m["ci_high"] + 1e-9
        distinct = metrics[label]["distinct_2"]["value"]  # null: no answer has two words
        assert distinct is None or 0.0 <= distinct <= 1.0
        wtl = sum(metrics[label][k]["value"] for k in ("ras", "tie_vs_reference", "loss_vs_reference"))
        assert wtl == pytest.approx(1.0)
    # trained models moved away from the base policy they are measured from
    assert metrics["sft"]["kl_from_start"]["value"] > 0.0
    assert metrics["grao"]["kl_from_start"]["value"] > 0.0

    log = pd.read_csv(project / "data/08_reporting/grao_training_log.csv")
    assert list(log["step"]) == [1, 2]
    assert log["echo_share"].between(0, 1).all() and "distinct_2" in log
    # the over-optimisation curve (evaluation.curve_every: 1): training reward, gold, KL
    assert log[["heldout/reward", "heldout/gold", "heldout/kl"]].notna().all().all()
    assert (log["heldout/kl"] >= 0).all() and log["heldout/kl"].iloc[-1] > 0
    for name in ("evaluation.png", "grao_training_curves.png", "sft_training_curves.png",
                 "data_report.json"):
        assert (project / "data/08_reporting" / name).stat().st_size > 0
    for model in ("base", "sft", "grao"):
        assert (project / "data/06_models" / model / "model.safetensors").is_file()
    # issue 31: a trained model records what made it, after what made its start
    runs = json.loads((project / "data/06_models/grao/config.json").read_text())["grao_pipeline_runs"]
    assert [r["method"] for r in runs] == ["sft", "grao"]
    assert runs[1]["config"]["beta"] == 0.5 and runs[1]["steps"] == 2
    assert runs[1]["starting weights"] != runs[0]["starting weights"]  # grao started from sft
    completions = pd.read_json(project / "data/07_model_output/evaluation_completions.jsonl", lines=True)
    assert len(completions) == 12 and set(completions["model"]) == {"base", "sft", "grao"}
    assert (project / "data/06_models/checkpoints/grao/step-000002").is_dir()
    # the reward models came first, from opposite halves of the conversations
    reports = {role: json.loads((project / f"data/08_reporting/{role}_reward_model_report.json").read_text())
               for role in ("proxy", "gold")}
    assert {r["pairs"]["half"] for r in reports.values()} == {"first", "second"}
    assert all(r["backbone"] == "minilm" and r["synthetic"] is False for r in reports.values())
    for role in ("proxy", "gold"):
        folder = project / f"data/06_models/{role}_reward_model"
        assert json.loads((folder / "config.json").read_text())["model_type"] == "bert"


@pytest.mark.slow
def test_bad_parameter_is_refused_before_anything_runs(project):
    bad = {**TINY_RUN, "grao": {**TINY_RUN["grao"], "num_generations": 1}}
    with pytest.raises(Exception, match="G must be >= 2"):
        kedro_run(project, ["grao"], bad)
    assert not (project / "data/06_models/grao").exists()


@pytest.mark.slow
def test_kedro_run_under_torchrun_saves_once_from_rank_zero(project):
    kedro_run(project, ["data_processing", "sft"])
    (project / "conf/local/parameters.yml").write_text(yaml.safe_dump(TINY_RUN))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", "2", "-m", "kedro", "run",
                           "--pipelines", "grao"], cwd=project, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    log = pd.read_csv(project / "data/08_reporting/grao_training_log.csv")
    assert list(log["step"]) == [1, 2]
    assert log["echo_share"].between(0, 1).all() and "distinct_2" in log
    # the over-optimisation curve (evaluation.curve_every: 1): training reward, gold, KL
    assert log[["heldout/reward", "heldout/gold", "heldout/kl"]].notna().all().all()
    assert (log["heldout/kl"] >= 0).all() and log["heldout/kl"].iloc[-1] > 0
    assert (log["samples"] == 2 * 2).all()  # 2 prompts × G=2 over both ranks
    assert (project / "data/06_models/grao/model.safetensors").is_file()
    assert sorted(p.name for p in (project / "data/06_models/checkpoints/grao").iterdir()) == [
        "step-000001", "step-000002"]
    leftovers = [p.name for p in (project / "data/06_models").iterdir() if p.name.startswith(".")]
    assert not leftovers
