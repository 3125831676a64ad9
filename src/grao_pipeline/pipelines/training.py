"""Training nodes for any registered method, generated from the method registry.

``kedro run --pipelines <name>`` trains method ``name`` from the SFT warm start and
writes ``<name>_model``, ``<name>_training_log`` and ``<name>_training_curves``. Each
node function carries a real signature whose ``params:`` arguments are typed with the
method's config classes, so Kedro validates them before any node runs.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import datasets
import pandas as pd
from kedro.pipeline import Pipeline, node, pipeline

from grao_pipeline.alignment.config import EvalConfig, RewardConfig
from grao_pipeline.alignment.evaluation import HeldOutCurve
from grao_pipeline.alignment.methods import parameter_sections, uses_reward
from grao_pipeline.alignment.models import ModelAndTokenizer
from grao_pipeline.alignment.rewards import CompositeReward
from grao_pipeline.alignment.run import reward_context, train_method
from grao_pipeline.plots import training_curves


def typed_function(fn: Callable, name: str, arguments: list[tuple[str, type]]) -> Callable:
    """``fn(*args)`` under ``name`` with the positional signature ``arguments``, so Kedro
    can map node inputs to typed arguments and validate ``params:`` inputs."""

    def wrapper(*args):
        return fn(*args)

    wrapper.__name__ = wrapper.__qualname__ = name
    wrapper.__signature__ = inspect.Signature(
        [inspect.Parameter(a, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=t)
         for a, t in arguments])
    wrapper.__annotations__ = dict(arguments)
    return wrapper


def method_inputs(name: str) -> list[tuple[str, str, type]]:
    """(argument, catalog entry, type) of every parameters input method ``name`` reads."""
    inputs = [(f"{section}_params", f"params:{section}", cls)
              for section, cls in parameter_sections(name).items()]
    if uses_reward(name):
        inputs.append(("reward_params", "params:rewards", RewardConfig))
    return inputs


def sections_of(name: str, params: list) -> dict:
    """Parameters section -> value, from node arguments in ``method_inputs`` order
    (a trailing reward config, where the method reads one, is not a section)."""
    return dict(zip(parameter_sections(name), params, strict=False))


def fit(name: str, start_policy: ModelAndTokenizer, train_set: datasets.Dataset, params: list,
        held_out: datasets.Dataset | None = None, eval_params: EvalConfig | None = None,
        callbacks: Sequence[Callable[[int, dict], None]] = (),
        **train_args) -> tuple[ModelAndTokenizer, pd.DataFrame, str]:
    """Train ``start_policy`` in place with method ``name``; ``params`` in the order of
    ``method_inputs``. With ``eval_params.curve_every``, the over-optimisation curve is
    measured on ``held_out`` as it trains; ``callbacks`` run after it each step. Returns
    the policy, its step log and the title of its training curves (drawn only where
    saved: ~0.8 s a figure)."""
    sections = sections_of(name, params)
    reward = CompositeReward(params[-1]) if uses_reward(name) else None
    reward_cfg = params[-1] if uses_reward(name) else None
    context = None if reward_cfg is None else reward_context(reward_cfg)
    curve = ([HeldOutCurve(start_policy, held_out.to_list(), eval_params, reward_cfg)]
             if reward_cfg is not None and eval_params is not None and eval_params.curve_every else [])
    policy, log, title = train_method(name, start_policy, train_set.to_list(), sections, reward,
                                      context=context, callbacks=[*curve, *callbacks], **train_args)
    return policy, pd.DataFrame(log), title


def method_pipeline(name: str, start: str = "sft_model", after: tuple[str, ...] = ()) -> Pipeline:
    """One node: train ``name`` from ``start``. A method that trains on a reward also
    reads the validation split and ``params:evaluation`` for the over-optimisation curve.
    ``after``: datasets the method reads by path through its settings (the default run's
    proxy reward model, named in ``rewards``), made inputs so that Kedro makes them
    first; their values are unused."""
    inputs = method_inputs(name)
    curve = [("held_out", "validation_set", datasets.Dataset),
             ("eval_params", "params:evaluation", EvalConfig)] if uses_reward(name) else []

    def train(start_policy, train_set, *rest):
        curve_args = dict(zip(("held_out", "eval_params"), rest[:len(curve)], strict=False))
        policy, steps, title = fit(name, start_policy, train_set,
                                   list(rest[len(curve):len(curve) + len(inputs)]), **curve_args)
        return policy, steps, training_curves(steps, title)

    func = typed_function(train, f"train_{name}", [
        ("start_policy", ModelAndTokenizer), ("train_set", datasets.Dataset),
        *[(arg, cls) for arg, _, cls in curve], *[(arg, cls) for arg, _, cls in inputs],
        *[(f"after_{i}", object) for i in range(len(after))]])
    return pipeline([node(func, [start, "train_set", *[entry for _, entry, _ in curve],
                                 *[entry for _, entry, _ in inputs], *after],
                          [f"{name}_model", f"{name}_training_log", f"{name}_training_curves"],
                          name=f"train_{name}")])
