"""Every command the README and docs/ show is run by a test, or listed here as not run,
with the reason; a new command in a ```bash block fails this file until it is one or
the other. The README's own-model and own-data blocks are run here as written."""

import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from grao_pipeline.io import HFModelDataset
from tests.pipelines.conftest import project  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").glob("*.md") if p.name != "perf-log.md")]

# command -> the test that runs it (or the same call with budgets shrunk)
RUN_BY = {
    "make run": "tests.pipelines.test_kedro_run:test_default_pipeline_runs_end_to_end",
    "make test": "the CI job itself (.ci/run)",
    "make docs": "tests.test_documented_commands:test_the_docs_build_strictly",
    "make compare KEDRO_ARGS=\"--env cpu_compare\"":
        "tests.pipelines.test_compare:test_an_interrupted_comparison_reruns_only_the_unfinished_runs",
    ".venv/bin/kedro run --env cpu_compare --pipelines data_processing,sft,compare":
        "tests.pipelines.test_compare:test_compare_every_method_two_seeds_then_the_notebook",
    "kedro run --env verifiable --pipelines data_processing,compare":
        "tests.pipelines.test_compare:test_a_comparison_from_the_base_model_runs_in_a_fresh_clone",
    ".venv/bin/kedro run --env verifiable --pipelines data_processing,compare":
        "tests.pipelines.test_compare:test_a_comparison_from_the_base_model_runs_in_a_fresh_clone",
    "make tune": "tests.pipelines.test_tuning:test_three_trial_study_writes_its_outputs_and_the_tuned_env_round_trips",
    "make tune-worker": "tests.pipelines.test_tuning:test_two_workers_share_a_journal_file_study",
    "kedro run --env tuned --pipelines grao":
        "tests.pipelines.test_tuning:test_three_trial_study_writes_its_outputs_and_the_tuned_env_round_trips",
    "make repro": "tests.pipelines.test_dvc:test_a_killed_repro_resumes_caches_reruns_what_changed_and_shares_through_the_remote",
    ".venv/bin/dvc exp run -S conf/base/parameters_grao.yml:grao.beta=0.3":
        "tests.pipelines.test_dvc:test_a_killed_repro_resumes_caches_reruns_what_changed_and_shares_through_the_remote",
    "dvc exp run -S conf/base/parameters_grao.yml:grao.beta=0.3":
        "tests.pipelines.test_dvc:test_a_killed_repro_resumes_caches_reruns_what_changed_and_shares_through_the_remote",
    ".venv/bin/dvc metrics diff": "tests.pipelines.test_dvc:test_a_killed_repro_resumes_caches_reruns_what_changed_and_shares_through_the_remote",
    "dvc metrics diff": "tests.pipelines.test_dvc:test_a_killed_repro_resumes_caches_reruns_what_changed_and_shares_through_the_remote",
    "dvc exp show": "tests.pipelines.test_dvc:test_a_killed_repro_resumes_caches_reruns_what_changed_and_shares_through_the_remote",
    "dvc push": "tests.pipelines.test_dvc:test_a_killed_repro_resumes_caches_reruns_what_changed_and_shares_through_the_remote",
    "dvc pull": "tests.pipelines.test_dvc:test_a_killed_repro_resumes_caches_reruns_what_changed_and_shares_through_the_remote",
    "git add dvc.lock && git commit -m \"run\"":
        "tests.pipelines.test_dvc:test_a_killed_repro_resumes_caches_reruns_what_changed_and_shares_through_the_remote",
    "kedro run --env verifiable --pipelines data_processing --params variant=v1":
        "tests.pipelines.test_verifiable_env:test_the_protocol_tunes_each_method_on_v1_and_compare_runs_with_the_tuned_values",
    "kedro run --env verifiable --pipelines tuning --params variant=v1":
        "tests.pipelines.test_verifiable_env:test_the_protocol_tunes_each_method_on_v1_and_compare_runs_with_the_tuned_values",
    "torchrun --nproc_per_node 2 -m kedro run --pipelines grao":
        "tests.pipelines.test_kedro_run:test_kedro_run_under_torchrun_saves_once_from_rank_zero",
}

NOT_RUN = {
    "make dashboard": "a server that runs until stopped; the storage it reads is tested",
    "kedro run --pipelines sensitivity": "~10 min at the shipped budget; run_sensitivity is "
                                         "covered by the tuning tests' storage and objective",
    "git add dvc.lock data && git commit -m \"baseline run\"": "plain git",
    "source .venv/bin/activate": "shell set-up",
    "dvc remote modify storage url s3://bucket/grao-pipeline": "needs a cloud bucket",
    "accelerate launch --config_file conf/accelerate/multi_cpu.yaml -m kedro run --pipelines grao":
        "accelerate's MULTI_CPU launcher needs mpirun (docs/operations.md); the same run "
        "under torchrun is tested",
    ".venv/bin/python benchmarks/step_time.py": "a benchmark (minutes, machine-dependent), never a test",
    ".venv/bin/python benchmarks/step_time.py --scaling": "a benchmark, never a test",
    ".venv/bin/python benchmarks/workflows.py": "a benchmark (tens of minutes), never a test",
    ".venv/bin/python benchmarks/workflows.py --only compare": "a benchmark, never a test",
    ".venv/bin/python benchmarks/workflows.py --ci": "a benchmark that runs CI itself, never a test",
    ".venv/bin/kedro run --env verifiable --pipelines data_processing,compare --params "
    "reference_error_rate=0.3,compare.methods=noisy": "the full noisy-reference grid (~40 min); "
    "the verifiable env is tested by tests/pipelines/test_verifiable_env.py",
    ".venv/bin/kedro run --env verifiable --pipelines data_processing,compare --params variant=v1":
        "a variant's full grid (~40 min); each variant's config, rows and reward are tested by "
        "tests/pipelines/test_config.py and tests/alignment/test_verifiable.py",
    "kedro run --env verifiable --pipelines tuning --params variant=v1 --namespaces tuning.grpo":
        "one of the six studies alone (Kedro's own --namespaces filter); the six are run by "
        "test_verifiable_env.py",
    ".venv/bin/python benchmarks/verifiable_calibration.py --variant v4": "a benchmark (minutes), never a test",
    ".venv/bin/kedro run --env verifiable --pipelines data_processing,compare --params "
    "compare.methods=core,grao.steps=60,grpo.steps=60,sft_continued.steps=60":
        "the 960-sample rerun (~1 h); the verifiable env is tested by test_verifiable_env.py",
}


def documented_commands() -> dict[str, str]:
    """Command -> the page that shows it, from every ```bash block (comments dropped,
    backslash continuations joined)."""
    found = {}
    for page in DOCS:
        for block in re.findall(r"```bash\n(.*?)```", page.read_text(), re.S):
            text = re.sub(r"\\\n\s*", " ", block)
            for line in text.splitlines():
                command = " ".join(re.sub(r"\s+#.*$", "", line).split())
                if command and not command.startswith("#"):
                    found[command] = page.name
    return found


def test_every_documented_command_is_run_by_a_test_or_marked_as_not_run():
    commands = documented_commands()
    unaccounted = {c: page for c, page in commands.items() if c not in RUN_BY and c not in NOT_RUN}
    assert not unaccounted, f"add each to RUN_BY (the test that runs it) or NOT_RUN (why not): {unaccounted}"
    stale = sorted((set(RUN_BY) | set(NOT_RUN)) - set(commands))
    assert not stale, f"listed here but no longer documented: {stale}"
    for command, test in RUN_BY.items():
        if test.startswith("tests."):
            module, _, name = test.partition(":")
            assert callable(getattr(importlib.import_module(module), name, None)), (command, test)


def test_the_docs_build_strictly(tmp_path):
    result = subprocess.run([str(Path(sys.executable).with_name("mkdocs")), "build", "--strict",
                             "--quiet", "--site-dir", str(tmp_path / "site")], cwd=ROOT,
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site/index.html").is_file()


def readme_yaml(containing: str) -> dict:
    blocks = [b for b in re.findall(r"```yaml\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
              if containing in b]
    assert len(blocks) == 1, f"one README yaml block with {containing!r}"
    return yaml.safe_load(blocks[0])


@pytest.mark.slow
def test_your_own_local_model_and_jsonl_as_the_readme_shows(project, tiny, tmp_path):  # noqa: F811
    """The README's two catalog blocks, verbatim but for the paths, through `kedro run`."""
    model_dir = tmp_path / "my_model"
    HFModelDataset(path=str(model_dir)).save(tiny)
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"prompt": f"question {i}: do you like tea?",
                                        "reference": f"yes, cup number {i}"}) + "\n"
                            for i in range(60)))
    model = readme_yaml("HFModelDataset")
    model["base_model_source"]["path"] = str(model_dir)
    data = readme_yaml("source: json")
    assert data["raw_rows"]["load_args"]["data_files"] == "/path/to/rows.jsonl"
    data["raw_rows"]["load_args"]["data_files"] = str(rows)
    (project / "conf/local/catalog.yml").write_text(yaml.safe_dump({**model, **data}))
    tiny_budget = ("data_processing.format=columns,sft.steps=1,sft.batch_size=2,"
                   "sft.mixed_precision=fp32,grao.steps=1,grao.prompts_per_step=2,"
                   "grao.num_generations=2,grao.max_completion_tokens=4,grao.mixed_precision=fp32,"
                   "grao.checkpoint_every=0")
    result = subprocess.run([str(Path(sys.executable).with_name("kedro")), "run", "--pipelines",
                             "data_processing,sft,grao", "--params", tiny_budget], cwd=project,
                            capture_output=True, text=True, timeout=600,
                            env={**os.environ, "COLUMNS": "1000"})
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((project / "data/08_reporting/data_report.json").read_text())
    assert report["format"] == "columns" and report["raw_rows"] == report["rows_kept"] == 60, report
    assert (project / "data/06_models/grao/model.safetensors").is_file()
