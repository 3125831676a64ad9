"""Preference pairs -> a reward model (TRL's ``RewardTrainer``) -> held-out pair accuracy.

Pairs are the ones DPO trains on: the dataset's ``chosen``/``rejected`` where it has
them (HH-RLHF), otherwise synthetic pairs from the SFT policy ranked by the configured
reward, marked ``synthetic``. A reward model fitted to synthetic pairs learns that
reward back: useful as a plumbing check and as a smooth stand-in, not as new signal.
"""

from __future__ import annotations

import tempfile

import datasets
import torch

from grao_pipeline.alignment.config import RewardConfig
from grao_pipeline.alignment.methods import get_method
from grao_pipeline.alignment.methods.dpo import DPOConfig
from grao_pipeline.alignment.metrics import bootstrap_ci
from grao_pipeline.alignment.models import ModelAndTokenizer
from grao_pipeline.alignment.rewards import CompositeReward
from grao_pipeline.alignment.rewards.reward_model import (
    RewardModelConfig,
    pair_accuracy,
    reward_model_from_policy,
    train_reward_model,
)


def preference_pairs(start_policy: ModelAndTokenizer, train_set: datasets.Dataset,
                     dpo_params: DPOConfig, reward_params: RewardConfig) -> tuple[list[dict], dict]:
    """DPO's pairs (dataset or synthetic), and the report of their making."""
    spec = get_method("dpo")
    method = spec.build(start_policy.tokenizer, CompositeReward(reward_params), dpo_params, start_policy.model)
    pairs, report = method.training_rows(start_policy.model, train_set.to_list())
    return [{k: p[k] for k in ("prompt", "chosen", "rejected")} | {"synthetic": bool(p["synthetic"])}
            for p in pairs], report


def split_pairs(pairs: list[dict], params: RewardModelConfig) -> tuple[list[dict], list[dict]]:
    """Seeded split into training and held-out pairs."""
    if len(pairs) < 4:
        raise ValueError(f"reward_model: {len(pairs)} preference pairs; need at least 4")
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(params.seed)).tolist()
    held = max(1, round(len(pairs) * params.eval_fraction))
    return [pairs[i] for i in order[held:]], [pairs[i] for i in order[:held]]


def fit_reward_model(start_policy: ModelAndTokenizer, train_pairs: list[dict], held_out: list[dict],
                     pairs_report: dict, params: RewardModelConfig) -> tuple[ModelAndTokenizer, dict]:
    """Train from the start model's backbone; report held-out pair accuracy (95% bootstrap
    interval) before and after training, on the same pairs."""
    tokenizer = start_policy.tokenizer
    with tempfile.TemporaryDirectory() as scratch:
        untrained = reward_model_from_policy(start_policy, params.seed)
        before = pair_accuracy(untrained, tokenizer, held_out, params.max_length)
        model = train_reward_model(start_policy, train_pairs, params, scratch)
    after = pair_accuracy(model, tokenizer, held_out, params.max_length)
    report = {"pairs": pairs_report, "train_pairs": len(train_pairs), "held_out_pairs": len(held_out),
              "synthetic": any(p["synthetic"] for p in train_pairs + held_out),
              "held_out_accuracy": bootstrap_ci(after, params.bootstrap_resamples, params.seed),
              "held_out_accuracy_untrained": bootstrap_ci(before, params.bootstrap_resamples, params.seed)}
    return ModelAndTokenizer(model, tokenizer), report
