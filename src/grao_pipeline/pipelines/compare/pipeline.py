"""``compare``: one namespaced modular pipeline per (method, seed), generated from the
method registry and ``compare.methods`` × ``compare.seeds``.

    compare.budget               the shared generated-sample budget (checked)
    compare.start_answers        the starting policy's answers to the test prompts
    fingerprint_inputs           fingerprints of the starting weights and rows, once
                                 (``compare.start_policy``: sft_model or base_model)
    compare.<method>.seed_<k>    train and evaluate -> training_log, scored, fingerprint
    summarise_comparison         reads only the per-run outputs

Each run's ``scored`` and ``training_log`` are persisted through dataset factories
(conf/base/catalog.yml), so ``kedro run --pipelines compare --only-missing-outputs``
after an interruption trains only the runs that had not finished (and, through
``fingerprint.StaleRuns``, those whose parameters or inputs changed), and
``--namespaces compare.grpo.seed_1`` reruns one alone.
"""

from __future__ import annotations

import dataclasses

import datasets
import pandas as pd
from kedro.pipeline import Pipeline, node, pipeline

from grao_pipeline.alignment.compare import CompareConfig
from grao_pipeline.alignment.config import EvalConfig, RewardConfig
from grao_pipeline.alignment.evaluation import answer_prompts
from grao_pipeline.alignment.methods import parameter_sections
from grao_pipeline.alignment.models import ModelAndTokenizer
from grao_pipeline.alignment.search import tuned_sections
from grao_pipeline.pipelines.sft.pipeline import export_base_pipeline
from grao_pipeline.pipelines.training import method_inputs, sections_of, typed_function

from .fingerprint import (
    budget_sections,
    curve_settings,
    input_fingerprints,
    run_fingerprint,
    tuned_input,
)
from .nodes import rollout_budget, summarise_comparison, train_and_evaluate

SHARED = {"train_set", "test_set", "compare_budget", "compare_start_answers", "compare_inputs"}


def run_namespace(method: str, seed: int) -> str:
    return f"compare.{method}.seed_{seed}"


def _budget_pipeline(methods: list[str], tuned: bool) -> Pipeline:
    """Budgets are checked on the settings the runs use: tuned ones where tuned (a
    recipe's tuned split of steps among them)."""
    sections = {s: cls for m in methods for s, cls in parameter_sections(m).items()}
    owners = {tuned_input(m): m for m in methods} if tuned else {}

    def check(*params):
        values = dict(zip(sections, params[:len(sections)], strict=True))
        tuned = dict(zip(owners.values(), params[len(sections):], strict=True))
        return rollout_budget(methods, budget_sections(methods, values, tuned))

    func = typed_function(check, "check_budgets", [(f"{s}_params", cls) for s, cls in sections.items()]
                          + [(name, dict) for name in owners])
    return pipeline([node(func, [f"params:{s}" for s in sections] + list(owners), "compare_budget",
                          name="check_budgets")])


def _run_pipeline(method: str, seed: int, settings: CompareConfig) -> Pipeline:
    """One node per run: train, then evaluate at once, so a run's policy is freed before
    the next run trains (Kedro's runner would otherwise train every run first and hold
    every policy in memory until the evaluations)."""
    sections = [(arg, entry, cls) for arg, entry, cls in method_inputs(method)
                if entry != "params:rewards"]

    start, tuned, curves = settings.start_policy, settings.tuned, settings.curve_every > 0

    def run(start_policy, train_set, budget, test_set, eval_params, start_answers, inputs,
            reward_params, *params):
        if curves:
            validation_set, *params = params
        if tuned:
            *params, best = params
            params = list(tuned_sections(method, sections_of(method, params), best).values())
        configs = {**{e: p for (_, e, _), p in zip(sections, params, strict=True)},
                   "params:rewards": reward_params, "params:evaluation": eval_params}
        made_of = run_fingerprint(method, seed, budget, configs, {**inputs, **curve_settings(settings)})
        curve = (dataclasses.replace(eval_params, curve_every=settings.curve_every,
                                     curve_prompts=settings.curve_prompts) if curves else None)
        # The fingerprint is saved first: a run with its scores always has it.
        return (made_of, *train_and_evaluate(method, seed, start_policy, train_set, budget,
                                             list(params), reward_params, test_set, eval_params,
                                             start_answers, validation_set if curves else None, curve))

    run_func = typed_function(run, f"run_{method}", [
        ("start_policy", ModelAndTokenizer), ("train_set", datasets.Dataset), ("budget", int),
        ("test_set", datasets.Dataset), ("eval_params", EvalConfig),
        ("start_answers", pd.DataFrame), ("inputs", dict), ("reward_params", RewardConfig),
        *([("validation_set", datasets.Dataset)] if curves else []),
        *[(arg, cls) for arg, _, cls in sections], *([("tuned", dict)] if tuned else [])])
    template = pipeline([
        node(run_func, [start, "train_set", "compare_budget", "test_set", "params:evaluation",
                        "compare_start_answers", "compare_inputs", "params:rewards",
                        *(["validation_set"] if curves else []),
                        *[e for _, e, _ in sections], *([tuned_input(method)] if tuned else [])],
             ["fingerprint", "training_log", "scored"], name="train_and_evaluate"),
    ])
    shared = (SHARED | {start} | ({tuned_input(method)} if tuned else set())
              | ({"validation_set"} if curves else set()))
    return pipeline(template, namespace=run_namespace(method, seed), inputs=shared,
                    parameters={e for _, e, _ in sections} | {"params:evaluation", "params:rewards"})


def create_pipeline(settings: CompareConfig) -> Pipeline:
    runs = [(m, s) for m in settings.methods for s in settings.seeds]

    def summarise(params, *frames):
        return summarise_comparison(params, *frames)

    summary = typed_function(summarise, "summarise_comparison",
                             [("params", CompareConfig), *[(f"run_{i}", pd.DataFrame)
                                                           for i in range(2 * len(runs))]])
    shared = pipeline([
        node(answer_prompts, [settings.start_policy, "test_set", "params:evaluation"],
             "compare_start_answers", name="answer_start"),
        # once per comparison: every run starts from the same weights and rows
        node(input_fingerprints, [settings.start_policy, "train_set", "test_set"],
             "compare_inputs", name="fingerprint_inputs"),
        node(summary, ["params:compare",
                       *[f"{run_namespace(m, s)}.scored" for m, s in runs],
                       *[f"{run_namespace(m, s)}.training_log" for m, s in runs]],
             ["compare_table", "compare_table_md", "compare_reward_curves", "compare_grao_shares",
              "compare_completions", "compare_training_logs"], name="summarise_comparison"),
    ])
    if settings.start_policy == "base_model":  # the verifiable task: no SFT stage before it
        shared += export_base_pipeline()
    return sum((_run_pipeline(m, s, settings) for m, s in runs),
               _budget_pipeline(settings.methods, settings.tuned) + shared)

