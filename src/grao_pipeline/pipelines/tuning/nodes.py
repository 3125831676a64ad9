"""Nodes of ``tuning`` (a TPE study with pruning) and ``sensitivity`` (a β × λ grid with
the centre cell over seeds). The studies live in the configured Optuna storage; these
nodes run them and turn them into tables, a config environment and figures."""

from __future__ import annotations

import dataclasses
import logging

import datasets
import matplotlib.pyplot as plt
import numpy as np
import optuna
import pandas as pd

from grao_pipeline.alignment.config import EvalConfig, RewardConfig
from grao_pipeline.alignment.methods import get_method
from grao_pipeline.alignment.models import ModelAndTokenizer
from grao_pipeline.alignment.search import decoded
from grao_pipeline.alignment.tuning import (
    SensitivityConfig,
    TuningConfig,
    ValidationScore,
    run_sensitivity,
    run_tuning,
)
from grao_pipeline.pipelines.training import sections_of
from grao_pipeline.plots import sensitivity_heatmap, study_figures

log = logging.getLogger(__name__)

# The paper's Table 3 (NAG %, helpful-base, Qwen2.5-7B): where our β = 0 and λ = 0 stand.
PAPER_ABLATIONS = {"full GRAO": 67.98, "without imitation (β = 0)": 63.79,
                   "without exploration": 64.38, "without regulariser (λ = 0)": 61.18}


def _score(validation_set: datasets.Dataset, evaluation: EvalConfig, rewards: RewardConfig,
           objective: str, prompts: int) -> ValidationScore:
    return ValidationScore(validation_set, dataclasses.replace(evaluation, num_prompts=prompts),
                           rewards, objective)


def tune(method: str, start_policy: ModelAndTokenizer, train_set: datasets.Dataset,
         validation_set: datasets.Dataset, params: TuningConfig, evaluation: EvalConfig,
         reward_params: RewardConfig, method_params: list
         ) -> tuple[pd.DataFrame, dict, dict, plt.Figure, plt.Figure, plt.Figure, plt.Figure]:
    """Run (or resume, or join as one more worker) ``method``'s study; return its trials,
    the best values as that method's parameters section, a report and the four Optuna
    figures."""
    score = _score(validation_set, evaluation, reward_params, params.objective, params.eval_prompts)
    study = run_tuning(params, method, start_policy, train_set.to_list(),
                       sections_of(method, method_params), score)
    trials = study.trials_dataframe(attrs=("number", "value", "state", "params", "duration",
                                           "intermediate_values", "user_attrs", "system_attrs"))
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        raise ValueError(f"study {study.study_name!r} has no complete trial to report")
    best = study.best_trial
    space = params.space(method)
    best_values = decoded(best.params, space)
    tuned = {get_method(method).section: best_values}
    states = trials["state"].value_counts().to_dict()
    report = {"study": study.study_name, "method": method, "objective": params.objective,
              "best_value": best.value, "best_params": best_values, "best_trial": best.number,
              "trials": states, "steps": params.steps, "eval_prompts": params.eval_prompts,
              "storage": params.storage.split("@")[-1]}
    log.info("tuning %s: best %s = %.4f at %s", method, params.objective, best.value, best_values)
    return (trials, tuned, report, *study_figures(study, list(space)))


def _number(value: float) -> float | None:
    """JSON has no NaN: an undefined spread (one seed, one cell) is written as null."""
    return value if np.isfinite(value) else None


def sensitivity(start_policy: ModelAndTokenizer, train_set: datasets.Dataset,
                validation_set: datasets.Dataset, params: SensitivityConfig, evaluation: EvalConfig,
                reward_params: RewardConfig, method_params: list
                ) -> tuple[pd.DataFrame, dict, plt.Figure, str]:
    """The β × λ map, the centre cell's seed spread beside the spread across cells, and
    the β = 0 / λ = 0 rows next to the paper's ablation table."""
    score = _score(validation_set, evaluation, reward_params, params.objective, params.eval_prompts)
    grid, centre = run_sensitivity(params, start_policy, train_set.to_list(),
                                   sections_of(params.method, method_params), score)
    rows = [{"beta": t.params["beta"], "lam": t.params["lam"], "seed": t.params["seed"], "value": t.value}
            for study in (grid, centre) for t in study.get_trials(
                deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]
    table = pd.DataFrame(rows).sort_values(["beta", "lam", "seed"]).reset_index(drop=True)
    first = table[table["seed"] == params.centre_seeds[0]]
    cells = first.pivot_table(index="beta", columns="lam", values="value")
    at_centre = table[(table["beta"] == params.centre["beta"]) & (table["lam"] == params.centre["lam"])]
    seed_std = float(at_centre["value"].std(ddof=1))
    cell_std = float(cells.to_numpy().std(ddof=1)) if cells.size > 1 else float("nan")
    centre_value = float(cells.loc[params.centre["beta"], params.centre["lam"]])
    report = {
        "objective": params.objective, "cells": int(cells.size),
        "centre": params.centre, "centre_values_by_seed": at_centre.set_index("seed")["value"].to_dict(),
        "centre_seed_std": _number(seed_std), "std_across_cells": _number(cell_std),
        "range_across_cells": _number(float(np.nanmax(cells.to_numpy()) - np.nanmin(cells.to_numpy()))),
        "best_cell": {"beta": float(first.loc[first["value"].idxmax(), "beta"]),
                      "lam": float(first.loc[first["value"].idxmax(), "lam"]),
                      "value": float(first["value"].max())},
    }
    lines = [f"| setting | ours: validation {params.objective} (seed {params.centre_seeds[0]}) | "
             "ours − centre | paper NAG % (Table 3) |", "|---|---|---|---|"]
    ours = {"full GRAO": centre_value}
    if 0.0 in cells.index:
        ours["without imitation (β = 0)"] = float(cells.loc[0.0, params.centre["lam"]])
    if 0.0 in cells.columns:
        ours["without regulariser (λ = 0)"] = float(cells.loc[params.centre["beta"], 0.0])
    for name, paper in PAPER_ABLATIONS.items():
        mine = ours.get(name)
        cell = "not in this grid" if mine is None else f"{mine:.3f}"
        delta = "–" if mine is None else f"{mine - centre_value:+.3f}"
        lines.append(f"| {name} | {cell} | {delta} | {paper} |")
    markdown = "\n".join(lines) + (
        f"\n\nCentre cell (β={params.centre['beta']}, λ={params.centre['lam']}) over seeds "
        f"{params.centre_seeds}: std {seed_std:.4f}; std across the {cells.size} cells: "
        f"{cell_std:.4f}. A difference between cells smaller than about twice the seed std "
        "is noise. The paper's column is NAG on helpful-base with a 7B model and an LLM "
        "judge; ours is a different metric, model and reward, so compare directions, not "
        "numbers.\n")
    return table, report, sensitivity_heatmap(cells, params, seed_std, cell_std), markdown
