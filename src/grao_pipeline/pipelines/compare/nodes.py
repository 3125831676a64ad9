"""Every method from the same warm start, over seeds, evaluated the same way.

Budgets are counted in generated samples: the on-policy methods must have the same
rollout settings as GRAO (checked, field by field); DPO's synthetic pairs are drawn
from the same number of samples; SFT generates nothing and sees as many reference rows.
"""

from __future__ import annotations

import copy
import dataclasses
import logging

import datasets
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from grao_pipeline.alignment.config import (
    CompareConfig,
    DPOConfig,
    EvalConfig,
    GRAOConfig,
    GRPOConfig,
    PPOConfig,
    RewardConfig,
    SFTConfig,
)
from grao_pipeline.alignment.evaluation import answer_prompts, score_answers
from grao_pipeline.alignment.metrics import (
    per_prompt_metrics,
    steps_to_reach,
    two_level_bootstrap_ci,
)
from grao_pipeline.alignment.models import ModelAndTokenizer
from grao_pipeline.pipelines.grao.nodes import train_grao
from grao_pipeline.pipelines.methods.nodes import (
    make_preference_pairs,
    train_dpo,
    train_grao_ablation,
    train_grpo,
    train_ppo,
    train_sft_continued,
)
from grao_pipeline.plots import compare_grao_shares, compare_reward_curves

log = logging.getLogger(__name__)

TABLE_METRICS = ("ras", "win_vs_reference", "tie_vs_reference", "loss_vs_reference", "nag",
                 "net_win_vs_start", "mean_reward", "kl_from_start", "response_length")


@dataclasses.dataclass
class _Configs:
    grao: GRAOConfig
    grpo: GRPOConfig
    ppo: PPOConfig
    dpo: DPOConfig
    sft_continued: SFTConfig
    ablations: dict
    rewards: RewardConfig


# What GRAO and the on-policy baselines must share for a fair comparison.
SHARED_ROLLOUT = ("steps", "prompts_per_step", "num_generations", "temperature",
                  "max_completion_tokens", "max_prompt_tokens", "learning_rate")


def check_budgets(cfgs: _Configs, methods: list[str]) -> int:
    """The generated-sample budget every method gets; refuses an on-policy baseline
    whose rollout settings differ from GRAO's, naming the fields."""
    for name in ("grpo", "ppo"):
        if name in methods or (name == "grpo" and "sft_grpo" in methods):
            other = getattr(cfgs, name)
            differ = [f"{f}: grao {getattr(cfgs.grao, f)} vs {name} {getattr(other, f)}"
                      for f in SHARED_ROLLOUT if getattr(cfgs.grao, f) != getattr(other, f)]
            if differ:
                raise ValueError(f"{name} and GRAO must share their rollout settings for a fair "
                                 f"comparison; they differ in {'; '.join(differ)}")
    return cfgs.grao.steps * cfgs.grao.prompts_per_step * cfgs.grao.num_generations


def _train(name: str, start: ModelAndTokenizer, train_set: datasets.Dataset, cfgs: _Configs,
           seed: int, budget: int) -> tuple[ModelAndTokenizer, pd.DataFrame]:
    """Train one method from a fresh copy of ``start``; return it and its step log with
    the cumulative generated samples."""
    def seeded(cfg):
        # No checkpoint_dir: comparison runs neither write checkpoints nor touch the
        # ones a method's own pipeline left for resuming.
        return dataclasses.replace(cfg, seed=seed, checkpoint_dir=None, checkpoint_every=0,
                                   resume=False)

    policy = ModelAndTokenizer(copy.deepcopy(start.model), start.tokenizer)
    rewards = cfgs.rewards
    if name == "grao":
        trained = train_grao(policy, train_set, seeded(cfgs.grao), rewards)
    elif name in cfgs.ablations:
        trained = train_grao_ablation(policy, train_set, seeded(cfgs.grao), cfgs.ablations[name], rewards)
    elif name == "grpo":
        trained = train_grpo(policy, train_set, seeded(cfgs.grpo), rewards)
    elif name == "ppo":
        trained = train_ppo(policy, train_set, seeded(cfgs.ppo), rewards)
    elif name == "sft_continued":
        trained = train_sft_continued(policy, train_set, seeded(cfgs.sft_continued))
    elif name == "sft_grpo":
        sft_phase, _, fig = train_sft_continued(policy, train_set, seeded(cfgs.sft_continued))
        plt.close(fig)
        trained = train_grpo(sft_phase, train_set, seeded(cfgs.grpo), rewards)
    elif name == "dpo":
        dpo_cfg = seeded(dataclasses.replace(
            cfgs.dpo, synthetic_prompts=max(1, budget // cfgs.dpo.candidates_per_prompt)))
        pairs, report = make_preference_pairs(policy, train_set, dpo_cfg, rewards)
        log.info("compare: dpo pairs %s", report)
        trained = train_dpo(policy, pairs, dpo_cfg)
    else:
        raise ValueError(f"unknown method {name!r}")
    model, steps, fig = trained
    plt.close(fig)
    samples = steps["samples"].cumsum() if "samples" in steps else pd.Series(0, index=steps.index)
    return model, steps.assign(method=name, seed=seed, generated_samples=samples)


def run_comparison(start_model: ModelAndTokenizer, train_set: datasets.Dataset,
                   test_set: datasets.Dataset, params: CompareConfig, grao: GRAOConfig,
                   grpo: GRPOConfig, ppo: PPOConfig, dpo: DPOConfig, sft_continued: SFTConfig,
                   grao_ablations: dict, rewards: RewardConfig, evaluation: EvalConfig
                   ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train and evaluate every (method, seed); returns scored answers and step logs."""
    cfgs = _Configs(grao, grpo, ppo, dpo, sft_continued, grao_ablations, rewards)
    budget = check_budgets(cfgs, params.methods)
    start_answers = answer_prompts(start_model, test_set, evaluation)
    scored, logs = [], []
    for seed in params.seeds:
        for name in params.methods:
            log.info("compare: %s, seed %d", name, seed)
            model, steps = _train(name, start_model, train_set, cfgs, seed, budget)
            answers = answer_prompts(model, test_set, evaluation, start_policy=start_model)
            scored.append(score_answers(answers, rewards, name, start_answers).assign(seed=seed))
            logs.append(steps)
    return pd.concat(scored, ignore_index=True), pd.concat(logs, ignore_index=True)


def summarise_comparison(scored: pd.DataFrame, logs: pd.DataFrame, params: CompareConfig
                         ) -> tuple[pd.DataFrame, str, plt.Figure, plt.Figure, dict[str, pd.DataFrame]]:
    """The paper-style table (CSV rows and Markdown), the two figures, and the
    completions split per method."""
    rows = []
    for name in params.methods:
        df = scored[scored["model"] == name].sort_values(["seed", "prompt"])
        seeds = sorted(df["seed"].unique())
        per_seed = [per_prompt_metrics(d["reward"], d["verdict_vs_reference"], d["verdict_vs_start"],
                                       d["kl_from_start"], d["length"])
                    for _, d in df.groupby("seed", sort=True)]
        for metric in TABLE_METRICS:
            ci = two_level_bootstrap_ci(np.stack([m[metric] for m in per_seed]),
                                        params.bootstrap_resamples)
            rows.append({"method": name, "metric": metric, **ci})
        method_logs = logs[logs["method"] == name]
        if "reward/mean" in method_logs and method_logs["reward/mean"].notna().any():
            reach = [steps_to_reach(method_logs[method_logs["seed"] == s]["reward/mean"],
                                    params.reach_fraction, params.smoothing_window) for s in seeds]
            rows.append({"method": name, "metric": f"steps_to_{round(params.reach_fraction * 100)}pct_reward",
                         "value": float(np.mean(reach)), "ci_low": float(min(reach)),
                         "ci_high": float(max(reach))})
    table = pd.DataFrame(rows, columns=["method", "metric", "value", "ci_low", "ci_high"])
    completions = {name: scored[scored["model"] == name].reset_index(drop=True)
                   for name in params.methods}
    return (table, markdown_table(table, len(params.seeds)), compare_reward_curves(logs),
            compare_grao_shares(logs), completions)


def markdown_table(table: pd.DataFrame, n_seeds: int) -> str:
    """One row per method, "value [low, high]" per metric."""
    metrics = list(dict.fromkeys(table["metric"]))
    lines = ["| method | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for name, group in table.groupby("method", sort=False):
        cells = {r.metric: f"{r.value:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]" for r in group.itertuples()}
        lines.append(f"| {name} | " + " | ".join(cells.get(m, "–") for m in metrics) + " |")
    note = (f"\nValues are means over {n_seeds} seed(s) × held-out prompts with 95% two-level "
            "bootstrap intervals (seeds, then prompts); steps-to-reward shows the mean and the "
            "range over seeds.\n")
    return "\n".join(lines) + "\n" + note
