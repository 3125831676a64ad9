"""Training nodes for the baselines and GRAO ablations, all on the shared loop.

Every method starts from the SFT warm start, uses the same reward and (for the
on-policy ones) the same rollout settings as GRAO (checked by `compare`).
"""

from __future__ import annotations

import dataclasses

import datasets
import matplotlib.pyplot as plt
import pandas as pd
import torch

from grao_pipeline.alignment.config import (
    DPOConfig,
    GRAOConfig,
    GRPOConfig,
    PPOConfig,
    RewardConfig,
    SFTConfig,
)
from grao_pipeline.alignment.methods import (
    DPOMethod,
    GRAOMethod,
    GRPOMethod,
    PPOMethod,
    SFTMethod,
    synthetic_pairs,
)
from grao_pipeline.alignment.models import ModelAndTokenizer
from grao_pipeline.alignment.rewards import CompositeReward
from grao_pipeline.pipelines.training import fit_policy

Trained = tuple[ModelAndTokenizer, pd.DataFrame, plt.Figure]


def train_grpo(start_model: ModelAndTokenizer, train_set: datasets.Dataset, params: GRPOConfig,
               reward_params: RewardConfig) -> Trained:
    """GRPO from ``start_model``."""
    method = GRPOMethod(start_model.tokenizer, CompositeReward(reward_params), params)
    return fit_policy(start_model, method, train_set, params, f"GRPO ({params.aggregation})")


def train_ppo(start_model: ModelAndTokenizer, train_set: datasets.Dataset, params: PPOConfig,
              reward_params: RewardConfig) -> Trained:
    """PPO with a value head on the policy trunk."""
    method = PPOMethod(start_model.tokenizer, CompositeReward(reward_params), params,
                       start_model.model.config.hidden_size)
    return fit_policy(start_model, method, train_set, params, "PPO")


def train_sft_continued(start_model: ModelAndTokenizer, train_set: datasets.Dataset,
                        params: SFTConfig) -> Trained:
    """More SFT on the reference answers."""
    return fit_policy(start_model, SFTMethod(start_model.tokenizer, params), train_set, params,
                      "SFT (continued)")


def train_grao_ablation(start_model: ModelAndTokenizer, train_set: datasets.Dataset,
                        params: GRAOConfig, change: dict, reward_params: RewardConfig) -> Trained:
    """GRAO with the fields in ``change`` replaced (e.g. ``{"beta": 0.0}``)."""
    unknown = set(change) - {f.name for f in dataclasses.fields(GRAOConfig)}
    if unknown:
        raise ValueError(f"GRAO ablation changes unknown fields {sorted(unknown)}")
    cfg = dataclasses.replace(params, **change)
    method = GRAOMethod(start_model.tokenizer, CompositeReward(reward_params), cfg)
    label = ", ".join(f"{k}={v}" for k, v in change.items())
    return fit_policy(start_model, method, train_set, cfg, f"GRAO ablation ({label})")


def make_preference_pairs(start_model: ModelAndTokenizer, train_set: datasets.Dataset,
                          params: DPOConfig, reward_params: RewardConfig
                          ) -> tuple[datasets.Dataset, dict]:
    """DPO pairs: the data's own (chosen = reference, rejected) where it has them,
    otherwise synthetic best-vs-worst pairs sampled from ``start_model``."""
    has_rejected = "rejected" in train_set.column_names
    source = params.pair_source if params.pair_source != "auto" else (
        "dataset" if has_rejected else "synthetic")
    if source == "dataset":
        if not has_rejected:
            raise KeyError("dpo.pair_source is 'dataset' but the training data has no "
                           "'rejected' column; use 'synthetic' or map one in data_processing.columns")
        pairs = [{"prompt": r["prompt"], "chosen": r["reference"], "rejected": r["rejected"],
                  "synthetic": False, "reward_margin": float("nan")} for r in train_set]
        return datasets.Dataset.from_list(pairs), {"source": "dataset", "pairs": len(pairs),
                                                   "generated_samples": 0}
    rows = train_set.shuffle(seed=params.seed).select(
        range(min(params.synthetic_prompts, len(train_set)))).to_list()
    torch.manual_seed(params.seed)
    start_model.model.eval()
    pairs, report = synthetic_pairs(start_model.model, start_model.tokenizer,
                                    CompositeReward(reward_params), rows,
                                    params.candidates_per_prompt, params.max_completion_tokens,
                                    params.temperature)
    if not pairs:
        raise ValueError("no synthetic DPO pairs: every prompt's candidates tied on reward")
    return datasets.Dataset.from_list(pairs), {"source": "synthetic", **report}


def train_dpo(start_model: ModelAndTokenizer, pairs: datasets.Dataset, params: DPOConfig) -> Trained:
    """DPO on ``pairs`` against a frozen copy of ``start_model``."""
    title = "DPO (synthetic pairs)" if any(pairs["synthetic"]) else "DPO"
    return fit_policy(start_model, DPOMethod(start_model.tokenizer, params), pairs, params, title)
