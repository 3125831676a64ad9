"""``compare`` as namespaced modular pipelines: every method × two seeds on a tiny
model, then the notebook that reads its outputs; a toy method registered from this
file runs through `kedro run` and `compare` without touching a project file; an
interrupted comparison reruns only the runs it had not finished."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
import yaml
from nbclient import NotebookClient

from grao_pipeline.alignment.compare import CompareConfig
from grao_pipeline.alignment.config import RolloutConfig
from grao_pipeline.alignment.logprobs import token_logps
from grao_pipeline.alignment.losses import sft_loss
from grao_pipeline.alignment.methods import BaseMethod, MethodSpec, register_method
from grao_pipeline.alignment.methods.sft import encode_answers
from grao_pipeline.pipelines.compare.nodes import (
    grao_differences,
    markdown_table,
    training_signal_rows,
)
from tests.fixtures import unregister_method

from .conftest import TINY_RUN, kedro_run

EVERY_METHOD = ["grao", "grpo", "ppo", "dpo", "sft_continued", "sft_grpo",
                "grao_no_imitation", "grao_no_regulariser", "grao_no_exploration"]
COMPARE_RUN = {**TINY_RUN, "compare": {"smoothing_window": 1, "bootstrap_resamples": 200}}


def set_compare(project: Path, methods: list[str], seeds: list[int]) -> None:
    """compare.methods/seeds shape the pipeline, so they go in a config environment."""
    (project / "conf/local/parameters_compare.yml").write_text(
        f"compare:\n  methods: {methods}\n  seeds: {seeds}\n")


@pytest.mark.slow
def test_compare_every_method_two_seeds_then_the_notebook(project):
    kedro_run(project, ["data_processing", "sft"])
    left_for_resume = project / "data/06_models/checkpoints/grao/step-000001"
    left_for_resume.mkdir(parents=True)
    set_compare(project, EVERY_METHOD, [0, 1])
    kedro_run(project, ["compare"], COMPARE_RUN)
    assert left_for_resume.is_dir()  # comparison runs never touch a method's checkpoints
    for method in EVERY_METHOD:
        for seed in (0, 1):
            run = project / f"data/07_model_output/compare/{method}/seed_{seed}"
            assert (run / "scored.jsonl").is_file() and (run / "training_log.csv").is_file()
    report = project / "data/08_reporting"
    table = pd.read_csv(report / "compare_table.csv")
    assert list(table.columns) == ["method", "metric", "value", "ci_low", "ci_high"]
    assert set(table["method"]) == set(EVERY_METHOD)
    for metric in ("ras", "tie_vs_reference", "nag", "net_win_vs_start", "mean_reward",
                   "kl_from_start", "response_length"):
        assert (table["metric"] == metric).sum() == len(EVERY_METHOD)
    assert not {"win_vs_reference", "win_vs_start"} & set(table["metric"])  # no duplicates
    diffs = table[table["metric"] == "diff_vs_grao"]
    assert set(diffs["method"]) == set(EVERY_METHOD) - {"grao"}
    # issue 34: what each run was given, on equal terms (2 updates of 2 prompts each)
    given = table.set_index(["method", "metric"])["value"]
    assert all(given[(m, "updates")] == 2 for m in EVERY_METHOD)
    assert {m: given[(m, "demonstrations")] for m in ("sft_continued", "grao", "grao_no_imitation",
                                                      "grpo", "sft_grpo")} == {
        "sft_continued": 4, "grao": 4, "grao_no_imitation": 0, "grpo": 0, "sft_grpo": 2}
    assert given[("grao", "generated_samples")] == given[("grpo", "generated_samples")] == 8
    assert given[("sft_continued", "generated_samples")] == 0 and given[("grao", "train_s")] > 0
    finite = table.dropna(subset=["value"])
    assert ((finite["ci_low"] <= finite["value"] + 1e-9) & (finite["value"] <= finite["ci_high"] + 1e-9)).all()
    reach = table[table["metric"] == "steps_to_90pct_reward"]
    assert set(reach["method"]) == set(EVERY_METHOD) - {"sft_continued", "dpo"}
    grouped = {"grao", "grpo", "sft_grpo", "grao_no_imitation", "grao_no_regulariser",
               "grao_no_exploration"}
    assert set(table[table["metric"] == "zero_variance_groups"]["method"]) == grouped
    with_y = set(table[table["metric"] == "reference_advantage_negative_steps"]["method"])
    assert with_y == {m for m in grouped if m.startswith("grao")} - {"grao_no_imitation"}
    md = (report / "compare_table.md").read_text()
    assert md.startswith("| method |") and "grao_no_imitation" in md
    logs = pd.read_csv(report / "compare_training_logs.csv")
    grao = logs[logs["method"] == "grao"]
    assert sorted(grao["seed"].unique()) == [0, 1] and grao["generated_samples"].max() == 2 * 2 * 2
    dpo = logs[logs["method"] == "dpo"]  # its synthetic pairs were generated: they count
    assert dpo["generated_samples"].max() == 2 * 2 * 2
    sft_grpo = logs[(logs["method"] == "sft_grpo") & (logs["seed"] == 0)]
    assert list(sft_grpo["phase"]) == ["sft_continued", "grpo"]  # phase_steps [1, 1]: GRAO's 2 updates
    assert list(sft_grpo["step"]) == [1, 2]
    for name in ("compare_reward_curves.png", "compare_grao_shares.png"):
        assert (report / name).stat().st_size > 0
    completions = project / "data/07_model_output/compare_completions"
    assert {p.stem for p in completions.glob("*.jsonl")} == set(EVERY_METHOD)

    nb = nbformat.read(project / "notebooks" / "compare.ipynb", as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(project / "notebooks")}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 2
    assert any("[grao]" in o.get("text", "") for o in outputs)


@dataclass
class ToyConfig(RolloutConfig):
    """A rollout config, so compare's budget check covers the toy method too."""

    scale: float = 2.0
    """How much louder than SFT the toy imitates."""


class ToyMethod(BaseMethod):
    """Imitates the reference, ``scale`` times louder than SFT: enough to be a method."""

    name = "toy"

    def __init__(self, tokenizer, cfg: ToyConfig):
        super().__init__()
        self.tokenizer, self.cfg, self.rows_per_step = tokenizer, cfg, cfg.prompts_per_step

    def prepare(self, model, rows):
        batch = encode_answers(self.tokenizer, [r["prompt"] for r in rows],
                               [r["reference"] for r in rows], self.cfg.max_completion_tokens)
        return batch, {"tokens": int(batch.answer_mask.sum())}

    def loss(self, model, batch):
        logps = token_logps(model, batch.prompt_ids, batch.prompt_mask,
                            batch.answer_ids, batch.answer_mask)
        loss, metrics = sft_loss(logps, batch.answer_mask)
        return self.cfg.scale * loss, {**metrics, "toy/seen": float(batch.answer_mask.sum())}


@pytest.fixture
def toy_method():
    register_method(MethodSpec("toy", ToyConfig, lambda tok, reward, cfg, model: ToyMethod(tok, cfg),
                               uses_reward=False))
    yield
    unregister_method("toy")


@pytest.mark.slow
def test_a_method_registered_in_a_test_runs_through_kedro_and_compare(project, toy_method):
    """One module (this file) plus one parameters file: no project file is edited."""
    (project / "conf/base/parameters_toy.yml").write_text(
        "toy:\n  steps: 2\n  prompts_per_step: 2\n  num_generations: 2\n  temperature: 1.0\n"
        "  max_completion_tokens: 6\n  max_prompt_tokens: 128\n  learning_rate: 1.0e-4\n"
        "  mixed_precision: fp32\n"
        "  show_progress: false\n")
    kedro_run(project, ["data_processing", "sft"])
    kedro_run(project, ["toy"])
    log = pd.read_csv(project / "data/08_reporting/toy_training_log.csv")
    assert list(log["step"]) == [1, 2] and (log["toy/seen"] > 0).all()
    assert (project / "data/06_models/toy/model.safetensors").is_file()

    set_compare(project, ["toy", "grao"], [0])
    kedro_run(project, ["compare"], COMPARE_RUN)
    table = pd.read_csv(project / "data/08_reporting/compare_table.csv")
    assert set(table["method"]) == {"toy", "grao"}
    # with a different rollout budget the toy method is refused before anything trains
    with pytest.raises(Exception, match="grao and toy must share|toy and grao must share"):
        kedro_run(project, ["compare"], {**COMPARE_RUN, "toy": {"steps": 3}})


def _kedro(project: Path, *args: str, columns: int = 80) -> subprocess.Popen:
    """``columns``: rich wraps log lines at this width; a wide one keeps a message whole
    (read such a run with ``communicate``: a full pipe would block its logging)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "COLUMNS": str(columns)}
    return subprocess.Popen([str(Path(sys.executable).parent / "kedro"), "run", *args], cwd=project,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_a_comparison_from_the_base_model_runs_in_a_fresh_clone(project):
    """Issue 31, case 12: `kedro run --env verifiable --pipelines data_processing,compare`
    failed in a fresh clone: only the sft pipeline exported data/06_models/base."""
    (project / "conf/local/parameters.yml").write_text(yaml.safe_dump(TINY_RUN))
    (project / "conf/local/parameters_compare.yml").write_text(yaml.safe_dump({"compare": {
        **COMPARE_RUN["compare"], "methods": ["sft_continued"], "seeds": [0],
        "start_policy": "base_model"}}))
    assert not (project / "data/06_models/base").exists()
    kedro_run(project, ["data_processing", "compare"], None)
    assert (project / "data/06_models/base/config.json").is_file()
    assert set(pd.read_csv(project / "data/08_reporting/compare_table.csv")["method"]) == {"sft_continued"}


@pytest.mark.slow
def test_an_interrupted_comparison_reruns_only_the_unfinished_runs(project):
    kedro_run(project, ["data_processing", "sft"])
    (project / "conf/local/parameters.yml").write_text(yaml.safe_dump(TINY_RUN))
    set_compare(project, ["sft_continued", "grao"], [0, 1])
    runs = [f"{m}/seed_{s}" for m in ("sft_continued", "grao") for s in (0, 1)]
    out = project / "data/07_model_output/compare"

    first = _kedro(project, "--pipelines", "compare")
    deadline = time.time() + 300
    while not (out / runs[0] / "scored.jsonl").is_file():  # one run finished...
        assert first.poll() is None and time.time() < deadline, first.stdout.read()
        time.sleep(0.2)
    os.kill(first.pid, signal.SIGKILL)  # ...then the machine dies
    first.wait()
    killed_at = time.time_ns()
    finished = {r: (out / r / "scored.jsonl").stat().st_mtime_ns
                for r in runs if (out / r / "scored.jsonl").is_file()}
    assert 1 <= len(finished) < len(runs)

    second = _kedro(project, "--pipelines", "compare", "--only-missing-outputs")
    text, _ = second.communicate(timeout=600)
    assert second.returncode == 0, text
    trained = {r for r in runs if (out / r / "training_log.csv").stat().st_mtime_ns > killed_at}
    assert trained == set(runs) - set(finished), text
    for run, mtime in finished.items():  # finished runs were left alone
        assert (out / run / "scored.jsonl").stat().st_mtime_ns == mtime
    table = pd.read_csv(project / "data/08_reporting/compare_table.csv")
    assert set(table["method"]) == {"sft_continued", "grao"}

    # issue 31, case 4: a changed parameter retrains the runs that read it, and says so
    before = {r: (out / r / "scored.jsonl").stat().st_mtime_ns for r in runs}
    (project / "conf/local/parameters.yml").write_text(yaml.safe_dump(
        {**TINY_RUN, "grao": {**TINY_RUN["grao"], "beta": 0.1, "lam": 0.2}}))
    third = _kedro(project, "--pipelines", "compare", "--only-missing-outputs", columns=1000)
    text, _ = third.communicate(timeout=600)
    assert third.returncode == 0, text
    retrained = {r for r in runs if (out / r / "scored.jsonl").stat().st_mtime_ns != before[r]}
    assert retrained == {"grao/seed_0", "grao/seed_1"}, text
    assert "compare.grao.seed_0: params:grao changed since it ran" in text, text
    assert json.loads((out / "grao/seed_0/fingerprint.json").read_text())["method"] == "grao"


@pytest.mark.slow
def test_kedro_viz_shows_every_registered_run_as_its_own_namespace(project):
    set_compare(project, EVERY_METHOD, [0, 1, 2])
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    done = subprocess.run([str(Path(sys.executable).parent / "kedro"), "viz", "build"], cwd=project,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    graph = json.loads((project / "build/api/pipelines/compare").read_text())
    namespaces = set(graph["modular_pipelines"])
    train_nodes = {n["full_name"] for n in graph["nodes"] if n["type"] == "task"}
    for method in EVERY_METHOD:
        for seed in (0, 1, 2):
            assert f"compare.{method}.seed_{seed}" in namespaces
            assert f"compare.{method}.seed_{seed}.train_and_evaluate" in train_nodes
    assert "summarise_comparison" in train_nodes


def test_training_signal_rows_are_means_and_ranges_over_seeds():
    logs = pd.DataFrame({
        "seed": [0, 0, 0, 1, 1, 1],
        "reward/mean": [0.0, 0.5, 1.0, 0.0, 0.0, 0.0],
        "frac_reward_zero_std": [1.0, 0.5, 0.0, 1.0, 1.0, 1.0],
        "frac_reference_advantage_negative": [0.0, 0.5, 0.0, 0.0, 0.0, 0.25],
        "share/imitation": [0.2, 0.4, 0.6, 0.1, 0.1, 0.1],
    })
    rows = {r["metric"]: r for r in training_signal_rows(
        "grao", logs, [0, 1], CompareConfig(methods=["grao"], smoothing_window=1))}
    # seed 0 reaches 90% of its gain at step 3; seed 1 never gains (left out)
    assert (rows["steps_to_90pct_reward"]["value"], rows["steps_to_90pct_reward"]["ci_high"]) == (3.0, 3.0)
    assert rows["zero_variance_groups"]["value"] == pytest.approx((0.5 + 1.0) / 2)
    assert (rows["zero_variance_groups"]["ci_low"], rows["zero_variance_groups"]["ci_high"]) == (0.5, 1.0)
    assert rows["reference_advantage_negative_groups"]["value"] == pytest.approx((1 / 6 + 1 / 12) / 2)
    assert rows["reference_advantage_negative_steps"]["value"] == pytest.approx((1 / 3 + 1 / 3) / 2)
    assert rows["share_imitation"]["value"] == pytest.approx((0.4 + 0.1) / 2)
    assert "share_exploration" not in rows


def test_differences_to_grao_are_paired_on_seed_and_prompt():
    """Rows in any order are matched by (seed, prompt): GRAO is 1 above GRPO on each."""
    def scored(model, rewards, prompts=("a", "b", "c")):
        return pd.DataFrame([{"model": model, "seed": s, "prompt": p, "reward": r + s}
                             for s in (0, 1) for p, r in zip(prompts, rewards, strict=True)])

    grao = scored("grao", [1.0, 2.0, 0.0])
    grpo = scored("grpo", [0.0, 1.0, -1.0]).iloc[::-1]  # reversed order: pairing is by key
    rows = grao_differences(pd.concat([grao, grpo]), 200)
    assert [(r["method"], r["metric"]) for r in rows] == [("grpo", "diff_vs_grao")]
    assert (rows[0]["value"], rows[0]["ci_low"], rows[0]["ci_high"]) == (1.0, 1.0, 1.0)
    assert grao_differences(grpo, 200) == []  # no GRAO, no differences
    with pytest.raises(ValueError, match="grpo was scored on seeds.*same of both"):
        grao_differences(pd.concat([grao, scored("grpo", [0.0, 1.0], ("a", "b"))]), 200)


def test_the_markdown_table_names_an_unknown_metric():
    table = pd.DataFrame([{"method": "grao", "metric": "ras", "value": 0.5, "ci_low": 0.4,
                           "ci_high": 0.6}])
    assert "| grao | 0.500 [0.400, 0.600] |" in markdown_table(table, 1, ["ras"])
    with pytest.raises(ValueError, match=r"table_metrics names \['accuracy'\]"):
        markdown_table(table, 1, ["accuracy"])
    # a metric this comparison cannot have (no GRAO to differ from): a dash, not a failure
    assert "| grao | 0.500 [0.400, 0.600] | – |" in markdown_table(table, 1, ["ras", "diff_vs_grao"])


def test_methods_may_name_a_method_set():
    sets = {"noisy": ["grao", "luffy"]}
    assert CompareConfig(methods="noisy", method_sets=sets).methods == ["grao", "luffy"]
    with pytest.raises(ValueError, match=r"'clean': names no set\. .*name a set of method_sets \(noisy\)"):
        CompareConfig(methods="clean", method_sets=sets)
    with pytest.raises(ValueError, match=r"'grao': names a method, not a set\. Kedro's --params takes no lists"):
        CompareConfig(methods="grao", method_sets=sets)


def test_the_budget_spent_to_reach_a_validation_score_is_read_from_the_step_log():
    """updates_to_target / samples_to_target: the first curve point at or above the
    target, with what the run had spent by then (updates, and demonstrations plus
    generated samples, cumulated over the log's steps); NaN where it never got there."""
    from grao_pipeline.pipelines.compare.nodes import to_target

    log = pd.DataFrame({"updates": [1, 1, 1, 1], "samples": [4, 4, 4, 4], "demonstrations": [0, 0, 0, 0],
                        "heldout/reward": [np.nan, 0.2, np.nan, 0.6]})
    assert to_target(log, 0.5) == (4.0, 16.0)
    assert to_target(log, 0.2) == (2.0, 8.0)
    assert all(np.isnan(v) for v in to_target(log, 0.7))
    sft_then_rl = pd.DataFrame({"updates": [1, 1, 1], "samples": [np.nan, np.nan, 4],
                                "demonstrations": [2, 2, np.nan], "heldout/reward": [0.1, 0.5, 0.9]})
    assert to_target(sft_then_rl, 0.5) == (2.0, 4.0)
    assert to_target(sft_then_rl, 0.9) == (3.0, 8.0)
