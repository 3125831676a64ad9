"""The shipped configuration: every parameters section a registered method reads
validates into its config class, and the environments keep every compared method on
the same generated-sample budget."""

import dataclasses

import pytest
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

from grao_pipeline.alignment.methods import parameter_sections, registered_methods
from grao_pipeline.pipelines.compare.nodes import rollout_budget

from .conftest import ROOT


def shipped_params(monkeypatch, env=None):
    monkeypatch.chdir(ROOT)
    bootstrap_project(ROOT)
    with KedroSession.create(project_path=ROOT, env=env) as session:
        return session.load_context().params


@pytest.mark.parametrize("env, budget, eval_prompts, eval_tokens", [
    (None, 160, 64, 32), ("cpu_compare", 80, 48, 32), ("verifiable", 320, 128, 16)])
def test_environments_give_equal_budgets(env, budget, eval_prompts, eval_tokens, monkeypatch):
    p = shipped_params(monkeypatch, env)
    for name in registered_methods():  # every section is present and typed
        for section, cls in parameter_sections(name).items():
            assert isinstance(p[section], cls), (name, section)
    assert rollout_budget(p["compare"].methods, p) == budget
    assert p["sft_continued"].steps * p["sft_continued"].batch_size == budget
    assert p["evaluation"].num_prompts == eval_prompts
    assert p["evaluation"].max_new_tokens == eval_tokens
    assert p["evaluation"].bootstrap_resamples == 1000  # soft merge keeps the untouched fields
    assert (p["grao"].beta, p["grao"].lam) == (0.5, 0.6)


def test_budget_mismatch_is_refused(monkeypatch):
    p = shipped_params(monkeypatch)
    sections = {**p, "grpo": dataclasses.replace(p["grpo"], steps=3)}
    with pytest.raises(ValueError, match="grpo and grao must share .* steps: grao 20 vs grpo 3"):
        rollout_budget(["grao", "grpo"], sections)
    # a recipe's on-policy phase is checked too
    with pytest.raises(ValueError, match="grpo and grao must share"):
        rollout_budget(["grao", "sft_grpo"], sections)
