"""Every method from the same warm start, over seeds, evaluated the same way.

Budgets are counted in generated samples: the on-policy methods must have the same
rollout settings as GRAO (checked, field by field); DPO's synthetic pairs are drawn
from the same number of samples; SFT generates nothing and sees as many reference rows.
"""

from __future__ import annotations

import copy
import logging

import datasets
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from grao_pipeline.alignment.compare import CompareConfig
from grao_pipeline.alignment.config import EvalConfig, RewardConfig, TrainConfig
from grao_pipeline.alignment.diagnostics import distinct_n, echoes, empties
from grao_pipeline.alignment.evaluation import answer_prompts, score_answers
from grao_pipeline.alignment.methods import phase_specs, uses_reward
from grao_pipeline.alignment.metrics import (
    length_matched,
    per_prompt_metrics,
    steps_to_reach,
    two_level_bootstrap_ci,
)
from grao_pipeline.alignment.models import ModelAndTokenizer
from grao_pipeline.pipelines.training import fit
from grao_pipeline.plots import compare_grao_shares, compare_reward_curves

log = logging.getLogger(__name__)

TABLE_METRICS = ("ras", "tie_vs_reference", "loss_vs_reference", "nag", "net_win_vs_start",
                 "mean_reward", "kl_from_start", "response_length", "echo_share", "empty_share")

# What the on-policy methods must share for a fair comparison.
SHARED_ROLLOUT = ("steps", "prompts_per_step", "num_generations", "temperature",
                  "max_completion_tokens", "max_prompt_tokens", "learning_rate")
# Comparison runs neither write checkpoints nor touch the ones a method's own pipeline
# left for resuming.
NO_CHECKPOINTS = {"checkpoint_dir": None, "checkpoint_every": 0, "resume": False}


def rollout_budget(methods: list[str], sections: dict[str, TrainConfig]) -> int:
    """The generated-sample budget every method gets: steps × prompts × G of the
    on-policy methods, which must all share their rollout settings (GRAO's, where GRAO
    is compared); a mismatch is refused, naming the fields. 0 if none is on-policy."""
    on_policy = [(spec, spec.config(sections[spec.section]))
                 for name in methods for spec in phase_specs(name) if spec.on_policy]
    if not on_policy:
        return 0
    anchor_spec, anchor = next(((s, c) for s, c in on_policy if s.name == "grao"), on_policy[0])
    for spec, cfg in on_policy:
        differ = [f"{f}: {anchor_spec.name} {getattr(anchor, f)} vs {spec.name} {getattr(cfg, f)}"
                  for f in SHARED_ROLLOUT if getattr(anchor, f) != getattr(cfg, f)]
        if differ:
            raise ValueError(f"{spec.name} and {anchor_spec.name} must share their rollout "
                             f"settings for a fair comparison; they differ in {'; '.join(differ)}")
    return anchor.steps * anchor.prompts_per_step * anchor.num_generations


def train_and_evaluate(name: str, seed: int, start_policy: ModelAndTokenizer,
                       train_set: datasets.Dataset, budget: int, sections: list,
                       reward_params: RewardConfig, test_set: datasets.Dataset,
                       params: EvalConfig, start_answers: pd.DataFrame
                       ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One (method, seed) run: train a copy of the starting policy, then answer and score
    the held-out prompts like the evaluation pipeline does (KL and verdicts against the
    untouched starting policy). The step log gains ``method``, ``seed`` and the
    cumulative ``generated_samples``."""
    policy = ModelAndTokenizer(copy.deepcopy(start_policy.model), start_policy.tokenizer)
    params_in_order = sections + ([reward_params] if uses_reward(name) else [])
    policy, steps, _ = fit(name, policy, train_set, params_in_order,
                           changes={"seed": seed, **NO_CHECKPOINTS}, budget=budget or None)
    samples = steps["samples"].fillna(0).cumsum() if "samples" in steps else 0
    answers = answer_prompts(policy, test_set, params, start_policy=start_policy)
    scored = score_answers(answers, reward_params, name, start_answers, params.gold).assign(seed=seed)
    return steps.assign(method=name, seed=seed, generated_samples=samples), scored


def summarise_comparison(params: CompareConfig, *runs: pd.DataFrame
                         ) -> tuple[pd.DataFrame, str, plt.Figure, plt.Figure, dict[str, pd.DataFrame],
                                    pd.DataFrame]:
    """Read every run's outputs (``runs``: all scored frames, then all step logs, in
    the same order) and make the paper-style table (CSV rows and Markdown), the two
    figures, the completions split per method, and all step logs in one table."""
    scored = pd.concat(runs[:len(runs) // 2], ignore_index=True)
    logs = pd.concat(runs[len(runs) // 2:], ignore_index=True)
    methods = list(dict.fromkeys(scored["model"]))
    rows = []
    for name in methods:
        df = scored[scored["model"] == name].sort_values(["seed", "prompt"])
        seeds = sorted(df["seed"].unique())
        per_seed = [per_prompt_metrics(d["reward"], d["verdict_vs_reference"], d["verdict_vs_start"],
                                       d["kl_from_start"], d["length"])
                    | {"echo_share": echoes(d["prompt"], d["completion"]),
                       "empty_share": empties(d["completion"])}
                    | ({"gold_reward": np.asarray(d["gold_reward"], float)} if "gold_reward" in d else {})
                    for _, d in df.groupby("seed", sort=True)]
        for metric in TABLE_METRICS + (("gold_reward",) if "gold_reward" in df else ()):
            ci = two_level_bootstrap_ci(np.stack([m[metric] for m in per_seed]),
                                        params.bootstrap_resamples)
            rows.append({"method": name, "metric": metric, **ci})
        matched = np.stack([length_matched(d["length"], d["reference_length"])
                            for _, d in df.groupby("seed", sort=True)])
        rows.append({"method": name, "metric": "ras_length_controlled",
                     **(two_level_bootstrap_ci(np.stack([m["ras"] for m in per_seed]),
                                               params.bootstrap_resamples, weights=matched)
                        if matched.any() else dict.fromkeys(("value", "ci_low", "ci_high"), float("nan")))})
        distinct = [distinct_n(d["completion"], 2) for _, d in df.groupby("seed", sort=True)]
        rows.append({"method": name, "metric": "distinct_2", "value": float(np.mean(distinct)),
                     "ci_low": float(np.min(distinct)), "ci_high": float(np.max(distinct))})
        rows += training_signal_rows(name, logs[logs["method"] == name], seeds, params)
    table = pd.DataFrame(rows, columns=["method", "metric", "value", "ci_low", "ci_high"])
    completions = {name: scored[scored["model"] == name].reset_index(drop=True) for name in methods}
    n_seeds = scored.groupby("model")["seed"].nunique().max()
    return (table, markdown_table(table, int(n_seeds), params.table_metrics), compare_reward_curves(logs),
            compare_grao_shares(logs), completions, logs)


def training_signal_rows(name: str, method_logs: pd.DataFrame, seeds: list, params: CompareConfig
                         ) -> list[dict]:
    """What the step logs say about the learning signal, each as the mean over seeds with
    the range over seeds: steps to reach ``reach_fraction`` of the training-reward gain;
    the share of groups with no reward variance (no group-relative gradient); for
    methods with y in the group, the share of groups, and of steps, where Â_y < 0 (y
    is pushed away from); and GRAO's loss-term shares. Methods without a rollout
    (SFT) have none of these."""
    by_seed = [method_logs[method_logs["seed"] == s] for s in seeds]

    def row(metric: str, values: list[float]) -> dict:
        v = np.array(values, dtype=float)
        v = v[~np.isnan(v)]
        stats = (v.mean(), v.min(), v.max()) if v.size else (float("nan"),) * 3
        return {"method": name, "metric": metric,
                **dict(zip(("value", "ci_low", "ci_high"), map(float, stats), strict=True))}

    def has(column: str) -> bool:
        return column in method_logs and bool(method_logs[column].notna().any())

    rows = []
    if has("reward/mean"):
        rows.append(row(f"steps_to_{round(params.reach_fraction * 100)}pct_reward",
                        [steps_to_reach(d["reward/mean"].dropna(), params.reach_fraction,
                                        params.smoothing_window) for d in by_seed]))
    if has("frac_reward_zero_std"):
        rows.append(row("zero_variance_groups", [d["frac_reward_zero_std"].mean() for d in by_seed]))
    if has("frac_reference_advantage_negative"):
        negative = [d["frac_reference_advantage_negative"].dropna() for d in by_seed]
        rows.append(row("reference_advantage_negative_groups", [n.mean() for n in negative]))
        rows.append(row("reference_advantage_negative_steps", [(n > 0).mean() for n in negative]))
    for term in ("exploration", "imitation", "regulariser"):
        if has(f"share/{term}"):
            rows.append(row(f"share_{term}", [d[f"share/{term}"].mean() for d in by_seed]))
    return rows


NAN_MEANS = {"steps": "no gain", "ras": "none matched"}


def markdown_table(table: pd.DataFrame, n_seeds: int, metrics: list[str] | None = None) -> str:
    """One row per method, "value [low, high]" per metric (``metrics``: which, in which
    order; default all)."""
    known = list(dict.fromkeys(table["metric"]))
    unknown = [m for m in metrics or [] if m not in known]
    if unknown:
        raise ValueError(f"compare.table_metrics names {unknown}, which no compared method "
                         f"has; the metrics of this comparison are {known}")
    metrics = metrics or known
    lines = ["| method | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for name, group in table.groupby("method", sort=False):
        cells = {r.metric: NAN_MEANS.get(r.metric.split("_")[0], "–") if np.isnan(r.value) else
                 f"{r.value:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]" for r in group.itertuples()}
        lines.append(f"| {name} | " + " | ".join(cells.get(m, "–") for m in metrics) + " |")
    note = (f"\nValues are means over {n_seeds} seed(s) × held-out prompts with 95% two-level "
            "bootstrap intervals (seeds, then prompts); the metrics from training logs "
            "(steps-to-reward, zero-variance groups, Â_y < 0, loss-term shares) and distinct_2 "
            "(over each seed's answers) show the mean and the range over seeds (steps-to-reward: over the seeds whose training reward "
            "rose; \"no gain\": none did); "
            "ras_length_controlled is RAS over the prompts whose answer is within ±20% (at least "
            "±3 tokens) of the reference's length.\n")
    return "\n".join(lines) + "\n" + note
