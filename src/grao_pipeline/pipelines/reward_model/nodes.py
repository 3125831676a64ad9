"""Preference pairs -> a reward model (TRL's ``RewardTrainer``) -> held-out pair accuracy.

Pairs (``reward_model.pair_source``) are either the ones DPO trains on (the dataset's
``chosen``/``rejected`` where it has them, otherwise synthetic pairs from the SFT policy
ranked by the configured reward, marked ``synthetic``: a reward model fitted to those
learns that reward back), or ``conversations``: made from the human conversations
alone, so nothing of any policy's outputs or of a hand-made reward enters them. Every
pair carries its ``kind``, and held-out accuracy is reported per kind.
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


def conversation_pairs(rows: list[dict], prompts: int, seed: int) -> tuple[list[dict], dict]:
    """For ``prompts`` rows drawn at random, the human reply y against: a human reply to
    another question drawn at random (``other_reply``), the question echoed whole
    (``echo``), and its first half (``echo_cut``, where the question has at least two
    words)."""
    if len(rows) < 2:
        raise ValueError(f"reward_model: {len(rows)} conversation rows; need at least 2")
    rng = torch.Generator().manual_seed(seed)
    drawn = torch.randperm(len(rows), generator=rng)[:prompts].tolist()
    others = rows
    rows = [rows[i] for i in drawn]
    pairs = []
    for i, row in enumerate(rows):
        other = (drawn[i] + 1 + int(torch.randint(len(others) - 1, (1,), generator=rng))) % len(others)
        words = row["prompt"].split()
        rejected = {"other_reply": others[other]["reference"], "echo": row["prompt"]}
        if len(words) >= 2:
            rejected["echo_cut"] = " ".join(words[:len(words) // 2])
        pairs += [{"prompt": row["prompt"], "chosen": row["reference"], "rejected": r, "kind": kind,
                   "synthetic": False} for kind, r in rejected.items() if r != row["reference"]]
    kinds = {k: sum(p["kind"] == k for p in pairs) for k in ("other_reply", "echo", "echo_cut")}
    return pairs, {"source": "conversations", "prompts": len(rows), "pairs": len(pairs), "kinds": kinds}


def preference_pairs(start_policy: ModelAndTokenizer, train_set: datasets.Dataset,
                     dpo_params: DPOConfig, reward_params: RewardConfig,
                     params: RewardModelConfig) -> tuple[list[dict], dict]:
    """The pairs of ``params.pair_source``, and the report of their making."""
    if params.pair_source == "conversations":
        return conversation_pairs(train_set.to_list(), params.conversation_prompts, params.seed)
    spec = get_method("dpo")
    method = spec.build(start_policy.tokenizer, CompositeReward(reward_params), dpo_params, start_policy.model)
    pairs, report = method.training_rows(start_policy.model, train_set.to_list())
    return [{k: p[k] for k in ("prompt", "chosen", "rejected")}
            | {"synthetic": bool(p["synthetic"]), "kind": "synthetic" if p["synthetic"] else "dataset"}
            for p in pairs], report


def split_pairs(pairs: list[dict], params: RewardModelConfig) -> tuple[list[dict], list[dict]]:
    """Seeded split into training and held-out pairs by prompt: every pair of a prompt
    lands on the same side, so no held-out reply was seen in training."""
    if len(pairs) < 4:
        raise ValueError(f"reward_model: {len(pairs)} preference pairs; need at least 4")
    prompts = list(dict.fromkeys(p["prompt"] for p in pairs))
    order = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(params.seed)).tolist()
    held = {prompts[i] for i in order[:max(1, round(len(prompts) * params.eval_fraction))]}
    return [p for p in pairs if p["prompt"] not in held], [p for p in pairs if p["prompt"] in held]


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
    kinds = sorted({p["kind"] for p in held_out})
    per_kind = {k: bootstrap_ci([a for a, p in zip(after, held_out, strict=True) if p["kind"] == k],
                                params.bootstrap_resamples, params.seed) for k in kinds}
    report = {"pairs": pairs_report, "train_pairs": len(train_pairs), "held_out_pairs": len(held_out),
              "synthetic": any(p["synthetic"] for p in train_pairs + held_out),
              "held_out_accuracy": bootstrap_ci(after, params.bootstrap_resamples, params.seed),
              "held_out_accuracy_by_kind": per_kind,
              "held_out_accuracy_untrained": bootstrap_ci(before, params.bootstrap_resamples, params.seed)}
    return ModelAndTokenizer(model, tokenizer), report
