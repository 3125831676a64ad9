"""Wall time of the workflows users run most, with a phase breakdown (issue 33).

    .venv/bin/python benchmarks/workflows.py                       # every workflow below
    .venv/bin/python benchmarks/workflows.py --only compare tuning # some of them
    .venv/bin/python benchmarks/workflows.py --ci                  # + a fresh-clone .ci/run

Each workflow runs as a user runs it, `kedro run` in a subprocess, in a throw-away copy
of the project (conf, src, notebooks, pyproject.toml) under a temporary folder, so the
project's own data/ is never touched. The phases are the nodes' wall times that the
``NodeTimes`` hook logs ("node answer_sft took 57.3 s"):

- ``kedro_run``: `make run`'s `kedro run`, first from nothing (``kedro_run_cold_s``:
  the reward models are trained), then again after deleting every output except the
  reward models' reuse cache (``kedro_run_s``: SFT, GRAO and evaluation run again, the
  reward models are found in the cache). ``evaluation_share``: the evaluation nodes'
  share of ``kedro_run_s``.
- ``compare``: the verifiable compare (`--env verifiable`) of GRAO, GRPO and SFT at one
  seed; ``compare_run_s_mean``: the mean over the three of one (method, seed) run's
  node (train 20 steps, then answer and score 128 problems), and the command's wall time
  with its shared nodes (data, base model export, the start policy's answers).
- ``tuning``: one Optuna trial of the β/λ study (`--pipelines tuning`, n_trials 1),
  after the kedro run above made the SFT model and reward models it reads.
- ``--ci``: ``ci_wall_s``, `CI=true bash .ci/run` in a fresh `git clone` of HEAD with
  this checkout's `.venv` linked in (the README's "with .venv already built").

Prints the machine and its measured peaks (``step_time.measure_peaks``); writes
benchmarks/workflows.json (flat: ``kedro_run_s``, ``kedro_run_cold_s``,
``evaluation_share``, ``compare_run_s_mean``, ``ci_wall_s``, … and each workflow's
slowest nodes), keeping the figures of workflows it did not run this time; ``date``
and ``machine`` are this run's.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
OUT = ROOT / "benchmarks/workflows.json"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
       "KEDRO_DISABLE_TELEMETRY": "true", "TOKENIZERS_PARALLELISM": "false", "COLUMNS": "400",
       "PATH": f"{ROOT / '.venv/bin'}:{os.environ['PATH']}"}
EVALUATION_NODES = re.compile(r"^(answer_|score_|summarise_evaluation)")
COMPARED = ("grao", "grpo", "sft_continued")


def project_copy(where: Path) -> Path:
    project = where / "project"
    for item in ("conf", "src", "notebooks"):
        shutil.copytree(ROOT / item, project / item,
                        ignore=shutil.ignore_patterns("local", "__pycache__", "*.egg-info"))
    shutil.copy(ROOT / "pyproject.toml", project / "pyproject.toml")
    (project / "conf/local").mkdir()
    return project


def kedro(project: Path, *args: str) -> tuple[float, dict[str, float]]:
    """Run `kedro run *args` in ``project``; (wall seconds, node -> seconds)."""
    start = time.perf_counter()
    done = subprocess.run([str(ROOT / ".venv/bin/kedro"), "run", *args], cwd=project, env=ENV,
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"kedro run {' '.join(args)} failed in {project}:\n{done.stderr[-4000:]}")
    nodes = {name: float(s) for name, s in re.findall(r"node (\S+) took (\d+\.\d+) s", done.stdout + done.stderr)}
    print(f"  kedro run {' '.join(args)}: {wall:.1f} s", flush=True)
    return wall, nodes


def slowest(nodes: dict[str, float], n: int = 8) -> dict[str, float]:
    return dict(sorted(nodes.items(), key=lambda kv: -kv[1])[:n])


def kedro_run_workflow(project: Path) -> dict:
    cold_s, cold_nodes = kedro(project)
    for item in (project / "data").iterdir():  # everything but the reward models' reuse cache
        if item.name == "06_models":
            for model in item.iterdir():
                if model.name != "reward_model_cache":
                    shutil.rmtree(model)
        elif item.is_dir():
            shutil.rmtree(item)
    warm_s, warm_nodes = kedro(project)
    evaluation_s = sum(s for name, s in warm_nodes.items() if EVALUATION_NODES.match(name))
    return {"kedro_run_cold_s": round(cold_s, 1), "kedro_run_s": round(warm_s, 1),
            "evaluation_s": round(evaluation_s, 1), "evaluation_share": round(evaluation_s / warm_s, 3),
            "kedro_run_cold_phases_s": slowest(cold_nodes), "kedro_run_phases_s": slowest(warm_nodes)}


def compare_workflow(project: Path) -> dict:
    # compare.methods and seeds shape the pipeline and are lists, which --params cannot
    # carry (it splits on commas): set them in the copy's verifiable environment.
    params = project / "conf/verifiable/parameters.yml"
    text, n = re.subn(r"(?m)^  methods: .*$", f"  methods: [{', '.join(COMPARED)}]", params.read_text())
    text, k = re.subn(r"(?m)^  seeds: .*$", "  seeds: [0]", text)
    if (n, k) != (1, 1):
        raise SystemExit(f"{params}: expected one compare.methods and one compare.seeds line")
    params.write_text(text)
    wall, nodes = kedro(project, "--env", "verifiable", "--pipelines", "data_processing,compare")
    runs = {m: nodes[f"compare.{m}.seed_0.train_and_evaluate"] for m in COMPARED}
    return {"compare_run_s_mean": round(sum(runs.values()) / len(runs), 1),
            "compare_run_s": {m: round(s, 1) for m, s in runs.items()},
            "compare_command_s": round(wall, 1), "compare_phases_s": slowest(nodes)}


def tuning_workflow(project: Path) -> dict:
    if not (project / "data/06_models/sft").is_dir():
        kedro(project, "--pipelines", "reward_models,sft")
    wall, nodes = kedro(project, "--pipelines", "tuning", "--params",
                        "tuning.n_trials=1,tuning.storage=sqlite:///data/09_tuning/bench.db")
    return {"tuning_trial_command_s": round(wall, 1), "tuning_phases_s": slowest(nodes)}


def ci_workflow(where: Path) -> dict:
    clone = where / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    (clone / ".venv").symlink_to(ROOT / ".venv")
    # The Makefile's install marker, newer than the clone's requirements: otherwise `make`
    # reinstalls, and `pip install -e .` re-points this checkout's venv at the clone
    # (which the run then deletes: `import grao_pipeline` fails here afterwards).
    (clone / ".venv/bin/.installed").touch(exist_ok=True)
    start = time.perf_counter()
    done = subprocess.run(["bash", ".ci/run"], cwd=clone, env={**ENV, "CI": "true"},
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    summary = re.findall(r"=+ (\d+ passed.*?) =+", done.stdout)
    return {"ci_wall_s": round(wall, 1), "ci_passed": done.returncode == 0,
            "ci_summary": summary[-1] if summary else done.stdout[-500:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", choices=["kedro_run", "compare", "tuning"],
                        default=["kedro_run", "compare", "tuning"],
                        help="the workflows to time; none (`--only --ci`) times CI alone")
    parser.add_argument("--ci", action="store_true", help="also time a fresh-clone .ci/run (~10-20 min)")
    args = parser.parse_args()
    from step_time import measure_peaks

    results = json.loads(OUT.read_text()) if OUT.is_file() else {}
    results["machine"] = measure_peaks()
    results["date"] = time.strftime("%Y-%m-%d")
    print(json.dumps(results["machine"]), flush=True)
    with tempfile.TemporaryDirectory(prefix="workflows-") as tmp:
        project = project_copy(Path(tmp))
        for name in args.only:
            print(name, flush=True)
            measured = globals()[f"{name}_workflow"](project)
            results.update(measured)
            print(json.dumps(measured, indent=2), flush=True)
            OUT.write_text(json.dumps(results, indent=2) + "\n")  # nothing lost if a later one fails
        if args.ci:
            measured = ci_workflow(Path(tmp))
            results.update(measured)
            print(json.dumps(measured, indent=2), flush=True)
    OUT.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
