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


def test_runtime_params_the_configuration_reads_are_not_misspelt_sections(monkeypatch):
    """`--params reference_error_rate=0.3` (docs/comparing.md) sets a value the verifiable
    catalog reads through ${runtime_params:...}; it was refused as a section no pipeline
    reads. A misspelling of it still is."""
    import kedro.framework.project as project

    from grao_pipeline.hooks import ParameterNameError, check_parameter_names, runtime_reads

    assert "reference_error_rate" in runtime_reads(ROOT / "conf")
    monkeypatch.chdir(ROOT)
    bootstrap_project(ROOT)
    with KedroSession.create(project_path=ROOT, env="verifiable",
                             runtime_params={"reference_error_rate": 0.3}) as session:
        p = session.load_context().config_loader["parameters"]
    assert p["reference_error_rate"] == 0.3
    check_parameter_names(p, project.pipelines, runtime_reads(ROOT / "conf"))
    with pytest.raises(ParameterNameError, match="did you mean 'reference_error_rate'"):
        check_parameter_names({**p, "reference_eror_rate": 0.3}, project.pipelines,
                              runtime_reads(ROOT / "conf"))


@pytest.mark.parametrize("env, budget, eval_prompts, eval_tokens", [
    (None, 160, 64, 32), ("cpu_compare", 80, 48, 32), ("verifiable", 320, 128, 16)])
def test_environments_give_equal_budgets(env, budget, eval_prompts, eval_tokens, monkeypatch):
    p = shipped_params(monkeypatch, env)
    for name in registered_methods():  # every section is present and typed
        for section, cls in parameter_sections(name).items():
            assert isinstance(p[section], cls), (name, section)
    assert rollout_budget(p["compare"].methods, p) == budget
    # SFT imitates the prompts GRAO sees, step for step
    assert (p["sft_continued"].steps, p["sft_continued"].batch_size) == (p["grao"].steps, p["grao"].prompts_per_step)
    assert p["evaluation"].num_prompts == eval_prompts
    assert p["evaluation"].max_new_tokens == eval_tokens
    assert p["evaluation"].bootstrap_resamples == 1000  # soft merge keeps the untouched fields
    assert (p["grao"].beta, p["grao"].lam) == (0.5, 0.6)


def test_budget_mismatch_is_refused(monkeypatch):
    p = shipped_params(monkeypatch)
    sections = {**p, "grpo": dataclasses.replace(p["grpo"], steps=3)}
    with pytest.raises(ValueError, match="grpo and grao must share .* steps: grao 20 vs grpo 3"):
        rollout_budget(["grao", "grpo"], sections)
    # a recipe's on-policy phase is checked too (its steps come from the recipe's split)
    sections = {**p, "grpo": dataclasses.replace(p["grpo"], temperature=1.0)}
    with pytest.raises(ValueError, match="grpo and grao must share .* temperature: grao 0.7 vs grpo 1.0"):
        rollout_budget(["grao", "sft_grpo"], sections)


@pytest.mark.parametrize("change, refused", [
    # SFT given 4x GRAO's demonstrations per step (the old confound)
    ({"sft_continued": {"batch_size": 8}},
     r"sft_continued has \[8\] per step and 20 updates. Set sft_continued.batch_size: 2"),
    # twice GRAO's updates from the same rollouts
    ({"ppo": {"epochs_per_rollout": 2}}, r"ppo has \[2\] per step and 40 updates. Set ppo.epochs_per_rollout: 1"),
    ({"dpo": {"steps": 10}}, r"dpo has \[2\] per step and 10 updates. Set dpo.steps: 20"),
    # a recipe whose phases add up to more than GRAO's updates
    ({"sft_grpo": {"phase_steps": [20, 20]}}, r"Set sft_grpo.phase_steps summing to 20"),
    ({"sft_grpo": {"phase_steps": None}}, r"sft_grpo has \[2, 2\] per step and 40 updates"),
    # unequal regularisation of the optimiser
    ({"sft_continued": {"max_grad_norm": 10.0}}, r"sft_continued and grao must share .* max_grad_norm"),
])
def test_compare_refuses_unequal_rows_per_step_or_updates(change, refused, monkeypatch):
    p = shipped_params(monkeypatch)
    methods = ["grao", "grpo", "ppo", "dpo", "sft_continued", "sft_grpo"]
    assert rollout_budget(methods, p) == 160  # the shipped settings are equal
    sections = {**p, **{k: dataclasses.replace(p[k], **v) for k, v in change.items()}}
    with pytest.raises(ValueError, match=refused):
        rollout_budget(methods, sections)


@pytest.mark.parametrize("runtime, folder, bonus, first_reference", [
    ({}, "noise_0.0", 0.0, "122"),
    ({"reference_error_rate": 0.3}, "noise_0.3", 0.0, "212"),
    ({"variant": "v1"}, "v1", 0.0, "59 + 63 = 122"),
    ({"variant": "v3"}, "v3", 0.5, "59 + 63 = 122"),
])
def test_a_variant_picks_its_data_folder_rows_and_reward(runtime, folder, bonus, first_reference, monkeypatch):
    """`--env verifiable --params variant=<v>`: the catalog's data folder, the generated
    rows and the reward's format bonus all follow the variant's one table."""
    import kedro.framework.project as project

    from grao_pipeline.hooks import check_parameter_names, runtime_reads

    monkeypatch.chdir(ROOT)
    bootstrap_project(ROOT)
    with KedroSession.create(project_path=ROOT, env="verifiable", runtime_params=runtime) as session:
        context = session.load_context()
        raw = context.config_loader["parameters"]
        assert context.config_loader["catalog"]["train_set"]["path"] == f"data/verifiable/{folder}/05_model_input/train"
        assert raw["rewards"]["components"]["exact_answer"]["format_bonus"] == bonus
        assert context.catalog.load("raw_rows")[0]["reference"] == first_reference
        check_parameter_names(raw, project.pipelines, runtime_reads(ROOT / "conf"))
