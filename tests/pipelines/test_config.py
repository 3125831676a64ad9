"""The shipped configuration: every parameters file validates into its dataclass, and
the environments keep every method on the same generated-sample budget."""

import pytest
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

from grao_pipeline.pipelines.compare.nodes import _Configs, check_budgets

from .conftest import ROOT


@pytest.mark.parametrize("env, budget, eval_prompts", [(None, 160, 64), ("cpu_compare", 80, 48)])
def test_environments_give_equal_budgets(env, budget, eval_prompts, monkeypatch):
    monkeypatch.chdir(ROOT)
    bootstrap_project(ROOT)
    with KedroSession.create(project_path=ROOT, env=env) as session:
        p = session.load_context().params
    cfgs = _Configs(p["grao"], p["grpo"], p["ppo"], p["dpo"], p["sft_continued"],
                    p["grao_ablations"], p["rewards"])
    assert check_budgets(cfgs, p["compare"].methods) == budget
    assert p["sft_continued"].steps * p["sft_continued"].batch_size == budget
    assert p["evaluation"].num_prompts == eval_prompts
    assert p["evaluation"].max_new_tokens == 32  # soft merge keeps the untouched fields
    assert (p["grao"].beta, p["grao"].lam) == (0.5, 0.6)


def test_budget_mismatch_is_refused(monkeypatch):
    import dataclasses

    monkeypatch.chdir(ROOT)
    bootstrap_project(ROOT)
    with KedroSession.create(project_path=ROOT) as session:
        p = session.load_context().params
    cfgs = _Configs(p["grao"], dataclasses.replace(p["grpo"], steps=3), p["ppo"], p["dpo"],
                    p["sft_continued"], p["grao_ablations"], p["rewards"])
    with pytest.raises(ValueError, match="grpo and GRAO must share .* steps: grao 20 vs grpo 3"):
        check_budgets(cfgs, ["grao", "grpo"])
