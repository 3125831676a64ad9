"""Held-out evaluation: fixed decoding, rewards, verdicts, KL, bootstrap intervals."""

from __future__ import annotations

import logging

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from grao_pipeline.alignment.config import EvalConfig
from grao_pipeline.alignment.metrics import bootstrap_ci, length_matched, per_prompt_metrics
from grao_pipeline.plots import evaluation_summary

log = logging.getLogger(__name__)


def summarise_evaluation(params: EvalConfig, *scored: pd.DataFrame
                         ) -> tuple[dict, plt.Figure, pd.DataFrame]:
    """{model: {metric: {value, ci_low, ci_high}}}, the summary plot, and all completions.

    A ``reference`` entry gives the reference answers' own mean reward for scale.
    ``ras_length_controlled`` is RAS over the length-matched prompts only (answer within
    ±20% of the reference's tokens, at least ±3; ``length_matched`` is their share): a
    policy that wins by being longer does not win there.
    """
    metrics: dict[str, dict[str, dict[str, float]]] = {}
    for df in scored:
        label = df["model"].iloc[0]
        per_prompt = per_prompt_metrics(df["reward"], df["verdict_vs_reference"],
                                        df["verdict_vs_start"], df["kl_from_start"], df["length"])
        per_prompt["reward_gain_vs_start"] = np.asarray(df["reward"] - df["start_reward"], float)
        per_prompt["frac_truncated"] = np.asarray(df["truncated"], float)
        per_prompt["length_matched"] = length_matched(df["length"], df["reference_length"])
        metrics[label] = {k: bootstrap_ci(v, params.bootstrap_resamples, params.seed)
                          for k, v in per_prompt.items()}
        if per_prompt["length_matched"].any():
            metrics[label]["ras_length_controlled"] = bootstrap_ci(
                per_prompt["ras"], params.bootstrap_resamples, params.seed,
                weights=per_prompt["length_matched"])
        else:  # no estimate at all: absent, not NaN (the report says how many matched)
            log.warning("evaluation: no %s answer is length-matched to its reference; "
                        "no length-controlled RAS", label)
    metrics["reference"] = {"mean_reward": bootstrap_ci(
        scored[0]["reference_reward"], params.bootstrap_resamples, params.seed)}
    completions = pd.concat(scored, ignore_index=True)
    return metrics, evaluation_summary(metrics), completions
