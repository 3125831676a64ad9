"""Held-out evaluation: fixed decoding, rewards, verdicts, KL, bootstrap intervals."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from grao_pipeline.alignment.config import EvalConfig
from grao_pipeline.alignment.metrics import bootstrap_ci, per_prompt_metrics
from grao_pipeline.plots import evaluation_summary


def summarise_evaluation(params: EvalConfig, *scored: pd.DataFrame
                         ) -> tuple[dict, plt.Figure, pd.DataFrame]:
    """{model: {metric: {value, ci_low, ci_high}}}, the summary plot, and all completions.

    A ``reference`` entry gives the reference answers' own mean reward for scale.
    """
    metrics: dict[str, dict[str, dict[str, float]]] = {}
    for df in scored:
        label = df["model"].iloc[0]
        per_prompt = per_prompt_metrics(df["reward"], df["verdict_vs_reference"],
                                        df["verdict_vs_start"], df["kl_from_start"], df["length"])
        per_prompt["reward_gain_vs_start"] = np.asarray(df["reward"] - df["start_reward"], float)
        per_prompt["frac_truncated"] = np.asarray(df["truncated"], float)
        metrics[label] = {k: bootstrap_ci(v, params.bootstrap_resamples, params.seed)
                          for k, v in per_prompt.items()}
    metrics["reference"] = {"mean_reward": bootstrap_ci(
        scored[0]["reference_reward"], params.bootstrap_resamples, params.seed)}
    completions = pd.concat(scored, ignore_index=True)
    return metrics, evaluation_summary(metrics), completions
