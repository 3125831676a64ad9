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
from grao_pipeline.alignment.diagnostics import distinct_n, echoes, empties, repeats, same_answers
from grao_pipeline.alignment.evaluation import HeldOutCurve, answer_prompts, score_answers
from grao_pipeline.alignment.methods import get_method, uses_reward
from grao_pipeline.alignment.metrics import (
    length_matched,
    paired_difference,
    per_prompt_metrics,
    steps_to_reach,
    two_level_bootstrap_ci,
)
from grao_pipeline.alignment.models import ModelAndTokenizer
from grao_pipeline.alignment.run import method_configs
from grao_pipeline.pipelines.training import fit
from grao_pipeline.plots import compare_grao_shares, compare_reward_curves

log = logging.getLogger(__name__)

TABLE_METRICS = ("ras", "tie_vs_reference", "loss_vs_reference", "nag", "net_win_vs_start",
                 "mean_reward", "kl_from_start", "response_length", "echo_share", "empty_share",
                 "repeat_share", "same_answer_share")

# What every method must share for a fair comparison: the tokens it reads and writes,
# and the optimiser's regularisation (AdamW's weight decay, gradient clipping). The
# learning rate is not here: each method is tuned for its own (docs/comparing.md).
SHARED_EVERY = ("max_completion_tokens", "max_prompt_tokens", "weight_decay", "max_grad_norm")
# What the on-policy methods also share: the rollout.
SHARED_ROLLOUT = ("steps", "prompts_per_step", "num_generations", "temperature")
# Comparison runs neither write checkpoints nor touch the ones a method's own pipeline
# left for resuming.
NO_CHECKPOINTS = {"checkpoint_dir": None, "checkpoint_every": 0, "resume": False}


def updates(cfg: TrainConfig) -> int:
    """Optimiser updates a phase makes: one per step, or ``epochs_per_rollout`` per rollout."""
    return cfg.steps * getattr(cfg, "epochs_per_rollout", 1)


def rollout_budget(methods: list[str], sections: dict[str, TrainConfig]) -> int:
    """Check that the methods compete on equal terms, and return the generated-sample
    budget: steps × prompts × G of the on-policy methods (0 if none is on-policy).

    Refused, naming the method, the fields and the fix:
    - any method whose tokens or optimiser regularisation (``SHARED_EVERY``), or, for
      on-policy methods, whose rollout (``SHARED_ROLLOUT``) differ from GRAO's (or,
      without GRAO, from the first on-policy method's);
    - any method that sees a different number of rows (prompts, SFT's demonstrations,
      DPO's pairs) per step, or makes a different number of optimiser updates in all
      (a recipe: summed over its phases). SFT thus imitates the same prompts' references
      that GRAO sees, step for step (rows are drawn by seed and step alone), and GRPO
      sees those prompts without y.
    """
    phases = {name: method_configs(name, sections) for name in methods}
    on_policy = [(spec, cfg) for name in methods for spec, cfg in phases[name] if spec.on_policy]
    anchor_name = "grao" if "grao" in methods else next(
        (n for n in methods if any(s.on_policy for s, _ in phases[n])), methods[0])
    anchor_spec, anchor = next(((s, c) for s, c in on_policy if s.name == anchor_name),
                               on_policy[0] if on_policy else phases[anchor_name][0])
    for name, spec, cfg in ((n, *pair) for n in methods for pair in phases[n]):
        shared = SHARED_EVERY + (SHARED_ROLLOUT if spec.on_policy and on_policy else ())
        if len(phases[name]) > 1:  # a recipe's phases split the steps (checked as updates below)
            shared = tuple(f for f in shared if f != "steps")
        differ = [f"{f}: {anchor_spec.name} {getattr(anchor, f)} vs {spec.name} {getattr(cfg, f)}"
                  for f in shared if getattr(anchor, f) != getattr(cfg, f)]
        if differ:
            what = "tokens, weight decay, clipping" + (" and rollout" if spec.on_policy and on_policy else "")
            raise ValueError(f"{spec.name} and {anchor_spec.name} must share their {what} for a fair "
                             f"comparison; they differ in {'; '.join(differ)}. Set {spec.section}'s "
                             f"to {anchor_spec.name}'s")

    def shape(name: str) -> tuple[list[int], int]:
        return ([getattr(cfg, cfg.batch_field) for _, cfg in phases[name]],
                sum(updates(cfg) for _, cfg in phases[name]))

    rows, total = shape(anchor_name)
    rows = rows[0]
    for name in methods:
        per_step, made = shape(name)
        wrong_rows = [(spec, cfg) for spec, cfg in phases[name] if getattr(cfg, cfg.batch_field) != rows]
        if wrong_rows or made != total:
            fixes = [f"{spec.section}.{cfg.batch_field}: {rows}" for spec, cfg in wrong_rows]
            if made != total:
                spec, cfg = phases[name][-1]
                if len(phases[name]) > 1:
                    fixes.append(f"{get_method(name).section}.phase_steps summing to {total}")
                elif hasattr(cfg, "epochs_per_rollout") and total % cfg.steps == 0:
                    fixes.append(f"{spec.section}.epochs_per_rollout: {total // cfg.steps}")
                else:
                    fixes.append(f"{spec.section}.steps: {total}")
            raise ValueError(
                f"compare gives every method the same rows per step and the same optimiser "
                f"updates ({anchor_name}: {rows} per step, {total} updates); {name} has "
                f"{per_step} per step and {made} updates. Set {'; '.join(fixes)}")
    if not on_policy:
        return 0
    return anchor.steps * anchor.prompts_per_step * anchor.num_generations


def train_and_evaluate(name: str, seed: int, start_policy: ModelAndTokenizer,
                       train_set: datasets.Dataset, budget: int, sections: list,
                       reward_params: RewardConfig, test_set: datasets.Dataset,
                       params: EvalConfig, start_answers: pd.DataFrame,
                       validation_set: datasets.Dataset | None = None, curve: EvalConfig | None = None
                       ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One (method, seed) run: train a copy of the starting policy, then answer and score
    the held-out prompts like the evaluation pipeline does (KL and verdicts against the
    untouched starting policy). With ``curve`` (its ``curve_every`` and
    ``curve_prompts``), the budget curve is measured on ``validation_set`` as it trains,
    for every method alike (SFT included: it is scored with the reward it never trains
    on). The step log gains ``method``, ``seed`` and the cumulative ``generated_samples``."""
    policy = ModelAndTokenizer(copy.deepcopy(start_policy.model), start_policy.tokenizer)
    params_in_order = sections + ([reward_params] if uses_reward(name) else [])
    budget_curve = ([HeldOutCurve(policy, validation_set.to_list(), curve, reward_params)]
                    if curve is not None else [])
    policy, steps, _ = fit(name, policy, train_set, params_in_order, callbacks=budget_curve,
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
                       "empty_share": empties(d["completion"]),
                       "repeat_share": repeats(d["completion"]),
                       "same_answer_share": same_answers(d["completion"])}
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
    rows += grao_differences(scored, params.bootstrap_resamples)
    table = pd.DataFrame(rows, columns=["method", "metric", "value", "ci_low", "ci_high"])
    completions = {name: scored[scored["model"] == name].reset_index(drop=True) for name in methods}
    n_seeds = scored.groupby("model")["seed"].nunique().max()
    return (table, markdown_table(table, int(n_seeds), params.table_metrics), compare_reward_curves(logs),
            compare_grao_shares(logs), completions, logs)


def grao_differences(scored: pd.DataFrame, resamples: int) -> list[dict]:
    """``diff_vs_grao`` for every other method: GRAO's mean reward minus the method's,
    paired on the same seeds and held-out prompts (``metrics.paired_difference``). None
    when GRAO is not compared; a method whose seeds or prompts differ from GRAO's is
    refused, since an unpaired difference would be reported as a paired one."""
    if "grao" not in set(scored["model"]):
        return []

    def grid(name: str) -> pd.DataFrame:
        return scored[scored["model"] == name].pivot_table(index="seed", columns="prompt",
                                                           values="reward", aggfunc="first")

    grao = grid("grao")
    rows = []
    for name in dict.fromkeys(scored["model"]):
        if name == "grao":
            continue
        other = grid(name)
        if set(other.index) != set(grao.index) or set(other.columns) != set(grao.columns):
            raise ValueError(f"diff_vs_grao: {name} was scored on seeds {sorted(other.index)} and "
                             f"{other.shape[1]} prompts, GRAO on seeds {sorted(grao.index)} and "
                             f"{grao.shape[1]}; a paired difference needs the same of both. Rerun "
                             "the comparison with one compare.seeds and one evaluation set")
        other = other.loc[grao.index, grao.columns]
        diff = paired_difference(grao.to_numpy(), other.to_numpy(), resamples)
        rows.append({"method": name, "metric": "diff_vs_grao",
                     **{k: diff[k] for k in ("value", "ci_low", "ci_high")}})
    return rows


def training_signal_rows(name: str, method_logs: pd.DataFrame, seeds: list, params: CompareConfig
                         ) -> list[dict]:
    """What the step logs say about each run's budget and learning signal, each as the
    mean over seeds with the range over seeds. The budget: ``demonstrations`` (reference
    answers the loss trained on), ``generated_samples``, optimiser ``updates`` and
    ``train_s`` (training wall time, evaluation excluded). The signal: steps to reach ``reach_fraction`` of the training-reward gain;
    the share of groups with no reward variance (no group-relative gradient); for
    methods with y in the group, the share of groups, and of steps, where Â_y < 0 (y
    is pushed away from); and GRAO's loss-term shares. Methods without a rollout
    (SFT) have none of these. With budget curves (``compare.curve_every``), every
    method: the updates and samples spent to reach ``curve_target`` (over the seeds
    that reached it), the share of seeds that did, and the curve's last point."""
    by_seed = [method_logs[method_logs["seed"] == s] for s in seeds]

    def row(metric: str, values: list[float]) -> dict:
        v = np.array(values, dtype=float)
        v = v[~np.isnan(v)]
        stats = (v.mean(), v.min(), v.max()) if v.size else (float("nan"),) * 3
        return {"method": name, "metric": metric,
                **dict(zip(("value", "ci_low", "ci_high"), map(float, stats), strict=True))}

    def has(column: str) -> bool:
        return column in method_logs and bool(method_logs[column].notna().any())

    rows = [row(metric, [float(d[column].fillna(0).sum()) if column in d else 0.0 for d in by_seed])
            for metric, column in (("demonstrations", "demonstrations"), ("generated_samples", "samples"),
                                   ("updates", "updates"), ("train_s", "time/step"))]
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
    if has("heldout/reward"):
        spent = [to_target(d, params.curve_target) for d in by_seed]
        rows.append(row("updates_to_target", [u for u, _ in spent]))
        rows.append(row("samples_to_target", [n for _, n in spent]))
        rows.append(row("reached_target", [float(not np.isnan(u)) for u, _ in spent]))
        rows.append(row("curve_last", [float(d["heldout/reward"].dropna().iloc[-1]) for d in by_seed]))
    return rows


def to_target(log: pd.DataFrame, target: float) -> tuple[float, float]:
    """A run's (optimiser updates, demonstrations + generated samples) spent when its
    budget curve (``heldout/reward``) first reached ``target``; NaNs if it never did. The
    log's rows are its steps in order (a recipe's phases one after the other)."""
    spent = pd.DataFrame({
        "updates": log["updates"].fillna(0).cumsum() if "updates" in log else np.arange(1, len(log) + 1),
        "samples": log.reindex(columns=["samples", "demonstrations"]).fillna(0).sum(axis=1).cumsum(),
        "score": log["heldout/reward"]}).dropna(subset=["score"])
    reached = spent[spent["score"] >= target]
    if reached.empty:
        return float("nan"), float("nan")
    return float(reached["updates"].iloc[0]), float(reached["samples"].iloc[0])


# Metrics only some comparisons have: GRAO's differences need GRAO compared, the rollout
# signals an on-policy method, the budget metrics compare.curve_every. A table asked for
# one its comparison lacks shows "–" there, rather than failing a one-method comparison.
CONDITIONAL_METRICS = ("diff_vs_grao", "gold_reward", "zero_variance_groups",
                       "reference_advantage_negative_groups", "reference_advantage_negative_steps",
                       "share_exploration", "share_imitation", "share_regulariser",
                       "updates_to_target", "samples_to_target", "reached_target", "curve_last")

NAN_MEANS = {"steps": "no gain", "ras": "none matched", "updates": "not reached", "samples": "not reached"}


def markdown_table(table: pd.DataFrame, n_seeds: int, metrics: list[str] | None = None) -> str:
    """One row per method, "value [low, high]" per metric (``metrics``: which, in which
    order; default all)."""
    known = list(dict.fromkeys(table["metric"]))
    unknown = [m for m in metrics or [] if m not in known and m not in CONDITIONAL_METRICS
               and not m.startswith("steps_to_")]
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
            "rose; \"no gain\": none did; updates/samples_to_target: over the seeds whose "
            "budget curve reached compare.curve_target; \"not reached\": none did); "
            "ras_length_controlled is RAS over the prompts whose answer is within ±20% (at least "
            "±3 tokens) of the reference's length; diff_vs_grao is GRAO's mean reward minus the "
            "method's, paired on the same seeds and prompts (above 0: GRAO better; a win or a "
            "loss only when the interval excludes 0).\n")
    return "\n".join(lines) + "\n" + note
