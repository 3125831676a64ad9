"""`kedro run --env verifiable`: the generated task flows through data processing, SFT and
grpo_sft, graded by the `answer` column."""

import json
import shutil

import datasets
import pandas as pd
import pytest
import yaml
from kedro.framework.session import KedroSession

from .conftest import TINY_ROLLOUT, TINY_RUN


@pytest.mark.slow
def test_the_verifiable_env_trains_grpo_sft_on_generated_problems(project):
    # the tiny base model, in the env that replaces conf/local
    with (project / "conf/verifiable/catalog.yml").open("a") as f:
        f.write((project / "conf/local/catalog.yml").read_text())
    params = {**TINY_RUN, "grpo_sft": {**TINY_ROLLOUT, "sft_coef": 0.5, "kl_coef": 0.0}}
    with KedroSession.create(project_path=project, env="verifiable", runtime_params=params) as session:
        session.run(pipeline_names=["data_processing", "sft", "grpo_sft"])
    train = datasets.load_from_disk(str(project / "data/verifiable/noise_0.0/05_model_input/train"))
    assert {"prompt", "reference", "answer", "reference_is_wrong"} <= set(train.column_names)
    assert train[0]["prompt"].startswith("What is ")
    log = pd.read_csv(project / "data/verifiable/noise_0.0/08_reporting/grpo_sft_training_log.csv")
    assert list(log["step"]) == [1, 2] and (log["sft_nll"] > 0).all()
    assert log["reward/mean"].between(0.0, 1.0).all()  # exact_answer: 1/0 per sample
    assert log["reward/reference"].eq(1.0).all()  # clean references are right answers


@pytest.mark.parametrize("env", ["base", "verifiable"])
def test_numeric_answers_stay_text_through_the_catalog(project, env):
    """The verifiable task's answers look like numbers ("57", "07"): saved and loaded
    through the catalog they are still text, as the diagnostics (echo share, distinct-2)
    and the summaries need them (an int answer crashed the comparison's summary)."""
    with KedroSession.create(project_path=project, env=None if env == "base" else env) as session:
        catalog = session.load_context().catalog
    scored = pd.DataFrame({"prompt": ["What is 3 + 4?", "What is 5 + 2?"], "reference": ["7", "07"],
                           "completion": ["7", "07"], "start_completion": ["12", "x"],
                           "reward": [1.0, 0.0], "model": ["grao", "grao"]})
    for name in ("compare.grao.seed_0.scored", "compare_completions"):
        catalog.save(name, scored if name.endswith("scored") else {"grao": scored})
        loaded = catalog.load(name)
        loaded = loaded if name.endswith("scored") else loaded["grao"]()
        for column in ("prompt", "reference", "completion", "start_completion"):
            assert list(loaded[column]) == list(scored[column]), (name, column)
        assert pd.api.types.is_numeric_dtype(loaded["reward"])


@pytest.mark.slow
def test_the_protocol_tunes_each_method_on_v1_and_compare_runs_with_the_tuned_values(project):
    """Issue 34 end to end on a tiny model: the verifiable env's six studies (one trial
    each) write each method's best values under conf/tuned_verifiable/v1/; a comparison
    with compare.tuned trains each run with them (the recipe: its tuned learning rate in
    both phases), and a rerun finds nothing stale."""
    with (project / "conf/verifiable/catalog.yml").open("a") as f:
        f.write((project / "conf/local/catalog.yml").read_text())
    shutil.rmtree(project / "conf/tuned_verifiable", ignore_errors=True)  # the repo's own studies
    rollout = {**TINY_ROLLOUT, "checkpoint_every": 0}
    params = {**TINY_RUN, "variant": "v1", "grao": rollout, "grpo": rollout, "luffy": rollout,
              "grpo_sft": rollout, "sft_continued": {**TINY_RUN["sft_continued"], "batch_size": 2},
              "evaluation": {**TINY_RUN["evaluation"], "num_prompts": 2},
              "tuning": {"steps": 2, "n_trials": 1, "eval_every": 1, "eval_prompts": 2, "pruner": "none",
                         "method_search_space": {"sft_grpo": {"phase_steps": {"choices": [[1, 1]]}}}}}
    compare = {"methods": ["grao", "sft_grpo"], "seeds": [0], "tuned": True,
               "curve_every": 1, "curve_prompts": 2}
    with KedroSession.create(project_path=project, env="verifiable", runtime_params=params) as session:
        session.run(pipeline_names=["data_processing"])
    with pytest.raises(FileNotFoundError, match=r"compare.tuned is true, but no study has written "
                                                r"tuned_grao, tuned_sft_grpo .*tuned_verifiable/v1/"):
        with KedroSession.create(project_path=project, env="verifiable",
                                 runtime_params={**params, "compare": compare}) as session:
            session.run(pipeline_names=["compare"])
    with KedroSession.create(project_path=project, env="verifiable", runtime_params=params) as session:
        session.run(pipeline_names=["data_processing", "tuning"])
    tuned = {}
    for method in ("sft_continued", "grpo", "grao", "grpo_sft", "luffy", "sft_grpo"):
        best = yaml.safe_load((project / f"conf/tuned_verifiable/v1/parameters_{method}.yml").read_text())
        assert list(best) == [method] and 3e-6 <= best[method]["learning_rate"] <= 3e-4, best
        report = json.loads((project / f"data/verifiable/v1/08_reporting/tuning/{method}/report.json").read_text())
        assert report["study"] == f"verifiable.v1.{method}" and report["best_params"] == best[method]
        tuned[method] = best[method]
    assert tuned["sft_grpo"]["phase_steps"] == [1, 1]
    assert {"beta", "lam"} <= set(tuned["grao"]) and "kl_coef" in tuned["grpo"]

    with KedroSession.create(project_path=project, env="verifiable",
                             runtime_params={**params, "compare": compare}) as session:
        session.run(pipeline_names=["compare"])
    logs = pd.read_csv(project / "data/verifiable/v1/08_reporting/compare_training_logs.csv")
    for method in ("grao", "sft_grpo"):
        lr = logs[logs["method"] == method]["lr"]
        assert len(lr) == 2 and lr.eq(tuned[method]["learning_rate"]).all(), (method, list(lr))
        # budget curves: a validation point after every step, SFT's phase included
        assert logs[logs["method"] == method]["heldout/reward"].notna().all()
    table = pd.read_csv(project / "data/verifiable/v1/08_reporting/compare_table.csv")
    reached = table[table["metric"] == "reached_target"].set_index("method")["value"]
    assert set(reached.index) == {"grao", "sft_grpo"} and reached.between(0, 1).all()
    scored = {m: project / f"data/verifiable/v1/07_model_output/compare/{m}/seed_0/scored.jsonl"
              for m in ("grao", "sft_grpo")}
    before = {m: p.stat().st_mtime_ns for m, p in scored.items()}
    with KedroSession.create(project_path=project, env="verifiable",
                             runtime_params={**params, "compare": compare}) as session:
        session.run(pipeline_names=["compare"], only_missing_outputs=True)
    assert {m: p.stat().st_mtime_ns for m, p in scored.items()} == before  # nothing retrained
