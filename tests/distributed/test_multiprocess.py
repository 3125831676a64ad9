"""Two CPU processes (DDP over gloo, launched by torchrun as `accelerate launch
--multi_gpu` does) against one process on the same global batch.

With pre-drawn completions keyed by prompt, GRAO and GRPO (TRL's aggregation and
DAPO's, whose token normaliser spans ranks) give the same first-step gradients and,
after 3 steps, the same weights. With real sampling a 2-process run completes and logs
metrics reduced over both ranks (tests/pipelines/test_kedro_run.py runs Kedro itself
under torchrun).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

SCRIPT = Path(__file__).with_name("run_tiny.py")
BIN = Path(sys.executable).parent


def launch(out: Path, processes: int, *args: str) -> dict:
    cmd = ([str(BIN / "torchrun"), "--nproc_per_node", str(processes)] if processes > 1
           else [sys.executable]) + [str(SCRIPT), "--out", str(out), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(SCRIPT.parents[2])}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads((out / "log.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("method, aggregation", [("grao", "grpo"), ("grpo", "grpo"), ("grpo", "dapo")])
def test_two_processes_match_one_on_the_same_global_batch(tmp_path, method, aggregation):
    args = ("--method", method, "--aggregation", aggregation, "--completions", "fixed")
    one = launch(tmp_path / "one", 1, *args)
    two = launch(tmp_path / "two", 2, *args)
    assert (one["world_size"], two["world_size"]) == (1, 2)
    grads, weights = ({run: load_file(tmp_path / run / f"{name}.safetensors") for run in ("one", "two")}
                      for name in ("grads_step1", "weights"))
    assert grads["one"].keys() == grads["two"].keys() == weights["one"].keys() == weights["two"].keys()
    for key in grads["one"]:
        assert torch.allclose(grads["one"][key], grads["two"][key], atol=1e-6, rtol=1e-4), key
    # Adam moves a weight by ~lr·sign(g) in its first steps, so where |g| is at float-noise
    # level (~1e-7: the ranks pad prompts to other lengths, and attention sums in other
    # blocks) a sign may differ. Allow a handful of such weights among 3.3M; a wrong split
    # of the batch moves most of them.
    apart = sum(int((~torch.isclose(weights["one"][k], weights["two"][k], atol=2e-5, rtol=1e-4)).sum())
                for k in weights["one"])
    assert apart <= 10, f"{apart} weights differ after {len(one['log'])} steps"
    for row_one, row_two in zip(one["log"], two["log"], strict=True):
        for key in ("loss", "reward/mean", "grad_norm", "samples", "tokens"):
            assert row_two[key] == pytest.approx(row_one[key], rel=1e-5, abs=1e-6), key


@pytest.mark.slow
def test_sampled_two_process_run_logs_metrics_over_both_ranks(tmp_path):
    log = launch(tmp_path, 2, "--method", "grao", "--completions", "sampled")["log"]
    assert [row["step"] for row in log] == [1, 2, 3]
    # 4 prompts per step, G = 3: each rank sampled 6; the logged count is the step's 12
    assert all(row["samples"] == 12 for row in log)
    assert all(0.0 <= row["frac_truncated"] <= 1.0 and row["grad_norm"] > 0 for row in log)
