"""Held-out evaluation: fixed decoding, rewards, verdicts, KL, bootstrap intervals."""

from __future__ import annotations

import logging

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from grao_pipeline.alignment.config import EvalConfig
from grao_pipeline.alignment.diagnostics import (
    distinct_n_ci,
    echoes,
    empties,
    repeats,
    same_answers,
)
from grao_pipeline.alignment.metrics import bootstrap_ci, length_matched, per_prompt_metrics
from grao_pipeline.plots import evaluation_summary

log = logging.getLogger(__name__)


def summarise_evaluation(params: EvalConfig, *scored: pd.DataFrame
                         ) -> tuple[dict, plt.Figure, pd.DataFrame]:
    """{model: {metric: {value, ci_low, ci_high}}}, the summary plot, and all completions.

    A ``reference`` entry gives the reference answers' own mean reward for scale.
    ``ras_length_controlled`` is RAS over the length-matched prompts only (answer within
    ±20% of the reference's tokens, at least ±3; ``length_matched`` is their share): a
    policy that wins by being longer does not win there. The hacking diagnostics,
    computed from the text alone, sit beside the reward: ``echo_share`` (answers at least
    80% copied from the question), ``empty_share`` (answers with no word),
    ``repeat_share`` (answers that repeat a run of 4 words), ``same_answer_share`` (answers
    identical to the model's most common one) and ``distinct_2`` (over the model's
    answers), and the same of the human references on the same prompts.
    """
    metrics: dict[str, dict[str, dict[str, float]]] = {}
    for df in scored:
        label = df["model"].iloc[0]
        per_prompt = per_prompt_metrics(df["reward"], df["verdict_vs_reference"],
                                        df["verdict_vs_start"], df["kl_from_start"], df["length"])
        per_prompt["reward_gain_vs_start"] = np.asarray(df["reward"] - df["start_reward"], float)
        per_prompt["frac_truncated"] = np.asarray(df["truncated"], float)
        per_prompt["length_matched"] = length_matched(df["length"], df["reference_length"])
        per_prompt["echo_share"] = echoes(df["prompt"], df["completion"])
        per_prompt["empty_share"] = empties(df["completion"])
        per_prompt["repeat_share"] = repeats(df["completion"])
        per_prompt["same_answer_share"] = same_answers(df["completion"])
        if "gold_reward" in df:  # a held-out scorer (evaluation.gold)
            per_prompt["gold_reward"] = np.asarray(df["gold_reward"], float)
            per_prompt["gold_minus_training"] = np.asarray(df["gold_reward"] - df["reward"], float)
        metrics[label] = {k: bootstrap_ci(v, params.bootstrap_resamples, params.seed)
                          for k, v in per_prompt.items()}
        metrics[label]["distinct_2"] = distinct_n_ci(df["completion"], 2, params.bootstrap_resamples,
                                                     params.seed)
        if per_prompt["length_matched"].any():
            metrics[label]["ras_length_controlled"] = bootstrap_ci(
                per_prompt["ras"], params.bootstrap_resamples, params.seed,
                weights=per_prompt["length_matched"])
        else:  # no estimate at all: absent, not NaN (the report says how many matched)
            log.warning("evaluation: no %s answer is length-matched to its reference; "
                        "no length-controlled RAS", label)
    first = scored[0]
    metrics["reference"] = {
        "mean_reward": bootstrap_ci(first["reference_reward"], params.bootstrap_resamples, params.seed),
        "echo_share": bootstrap_ci(echoes(first["prompt"], first["reference"]),
                                   params.bootstrap_resamples, params.seed),
        "repeat_share": bootstrap_ci(repeats(first["reference"]), params.bootstrap_resamples, params.seed),
        "same_answer_share": bootstrap_ci(same_answers(first["reference"]), params.bootstrap_resamples,
                                          params.seed),
        "distinct_2": distinct_n_ci(first["reference"], 2, params.bootstrap_resamples, params.seed)}
    if "reference_gold_reward" in first:
        metrics["reference"]["gold_reward"] = bootstrap_ci(first["reference_gold_reward"],
                                                           params.bootstrap_resamples, params.seed)
    completions = pd.concat(scored, ignore_index=True)
    return metrics, evaluation_summary(metrics), completions
