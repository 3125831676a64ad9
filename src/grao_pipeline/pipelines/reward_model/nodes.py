"""Preference pairs -> a reward model (TRL's ``RewardTrainer``) -> held-out pair accuracy.

Pairs (``reward_model.pair_source``) are either the ones DPO trains on (the dataset's
``chosen``/``rejected`` where it has them, otherwise synthetic pairs from the SFT policy
ranked by the configured reward, marked ``synthetic``: a reward model fitted to those
learns that reward back), or ``conversations``: made from the human conversations
alone, so nothing of any policy's outputs or of a hand-made reward enters them. Every
pair carries its ``kind``, and held-out accuracy is reported per kind.

The default run makes two ``conversations`` reward models on opposite halves of the
training conversations, with different seeds: the ``proxy`` that every method trains
against and the ``gold`` that evaluation judges with (pipeline.py).
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import tempfile
from pathlib import Path

import datasets
import torch

from grao_pipeline.alignment.config import RewardConfig
from grao_pipeline.alignment.files import replace_atomically
from grao_pipeline.alignment.methods import get_method
from grao_pipeline.alignment.methods.dpo import DPOConfig
from grao_pipeline.alignment.metrics import bootstrap_ci
from grao_pipeline.alignment.models import ModelAndTokenizer, save_model
from grao_pipeline.alignment.rewards import CompositeReward
from grao_pipeline.alignment.rewards.reward_model import (
    RewardModelConfig,
    cache_key,
    load_reward_model,
    pair_accuracy,
    train_reward_model,
    untrained_reward_model,
)

log = logging.getLogger(__name__)
REPORT = "reward_model_report.json"


COMMON_REPLIES = 20
"""How many of the most frequent human replies ``common_reply`` draws from."""


def in_half(prompt: str, half: str) -> bool:
    """Whether a question belongs to ``half`` ("all", "first", "second"): by a hash of its
    text, so a question asked in several conversations lands in one half only."""
    return half == "all" or (hashlib.sha256(prompt.encode()).digest()[0] % 2 == 0) == (half == "first")


def conversation_pairs(rows: list[dict], prompts: int, seed: int, half: str = "all"
                       ) -> tuple[list[dict], dict]:
    """For ``prompts`` rows of ``half`` drawn at random, the human reply y against: a human
    reply to another question of that half drawn at random (``other_reply``), the
    question echoed whole (``echo``), its first half (``echo_cut``, where the question
    has at least two words), y followed by a second other reply (``padded``), y cut
    to at most half its words, none included (``reply_cut``), y said twice
    (``repeated``), and one of the ``COMMON_REPLIES`` most frequent replies of the half
    ("yeah", "yes", "no"...) drawn at random, where it differs from y (``common_reply``).

    ``padded`` and ``reply_cut`` bound length from both sides, each made from the human
    replies alone: a reward model trained on the first three kinds learnt "longer is
    better" and was won by answers that ran to the token limit; one trained with
    ``padded`` as well had never seen a reply shorter than two characters
    (data_processing drops them), and was won by the empty answer. ``repeated`` holds
    what the human replies show, that people do not repeat themselves (0.5% of the
    19,444 training replies repeat a run of four words): the reward model with the
    first five kinds was won by answers that loop one sentence to the token limit.
    ``common_reply`` holds that a reply people give to many questions says nothing about
    this one (the 20 most common replies make up 2.1% of the training replies); the
    reward model with the first six kinds was won by "yes" to every question
    (docs/rewards.md)."""
    rows = [r for r in rows if in_half(r["prompt"], half)]
    if len(rows) < 2:
        raise ValueError(f"reward_model: {len(rows)} conversation rows in half {half!r}; need at least 2")
    rng = torch.Generator().manual_seed(seed)
    drawn = torch.randperm(len(rows), generator=rng)[:prompts].tolist()
    others = rows
    rows = [rows[i] for i in drawn]
    counts = collections.Counter(r["reference"].strip().lower() for r in others)
    common = [reply for reply, _ in counts.most_common(COMMON_REPLIES)]
    pairs = []
    for i, row in enumerate(rows):
        other, second = ((drawn[i] + 1 + int(k)) % len(others)
                         for k in torch.randint(len(others) - 1, (2,), generator=rng))
        words = row["prompt"].split()
        rejected = {"other_reply": others[other]["reference"], "echo": row["prompt"]}
        if len(words) >= 2:
            rejected["echo_cut"] = " ".join(words[:len(words) // 2])
        rejected["padded"] = f"{row['reference']} {others[second]['reference']}"
        said = row["reference"].split()
        rejected["reply_cut"] = " ".join(said[:int(torch.randint(len(said) // 2 + 1, (1,), generator=rng))])
        rejected["repeated"] = f"{row['reference']} {row['reference']}"
        generic = common[int(torch.randint(len(common), (1,), generator=rng))]
        if generic != row["reference"].strip().lower():
            rejected["common_reply"] = generic
        pairs += [{"prompt": row["prompt"], "chosen": row["reference"], "rejected": r, "kind": kind,
                   "synthetic": False} for kind, r in rejected.items() if r != row["reference"]]
    kinds = {k: sum(p["kind"] == k for p in pairs)
             for k in ("other_reply", "echo", "echo_cut", "padded", "reply_cut", "repeated", "common_reply")}
    return pairs, {"source": "conversations", "half": half, "prompts": len(rows), "pairs": len(pairs),
                   "kinds": kinds}


def preference_pairs(train_set: datasets.Dataset, params: RewardModelConfig,
                     start_policy: ModelAndTokenizer | None = None, dpo_params: DPOConfig | None = None,
                     reward_params: RewardConfig | None = None) -> tuple[list[dict], dict]:
    """The pairs of ``params.pair_source``, and the report of their making. ``dpo``
    pairs need the start policy, DPO's settings and the reward that ranks them."""
    if params.pair_source == "conversations":
        return conversation_pairs(train_set.to_list(), params.conversation_prompts, params.seed,
                                  params.conversation_half)
    if start_policy is None or dpo_params is None or reward_params is None:
        raise ValueError("reward_model.pair_source: dpo needs the start policy, params:dpo and "
                         "params:rewards, and this pipeline passes none (the default run's proxy "
                         "and gold reward models are made from the conversations alone). Set "
                         "pair_source: conversations")
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


def fit_reward_model(train_pairs: list[dict], held_out: list[dict], pairs_report: dict,
                     params: RewardModelConfig, start_policy: ModelAndTokenizer | None = None
                     ) -> tuple[ModelAndTokenizer, dict]:
    """Train a scalar head on ``params.backbone``; report held-out pair accuracy (95%
    bootstrap interval) before and after training, on the same pairs, overall and per
    kind of rejected answer. With ``params.cache_dir``, a model trained before on the
    same key (settings, pairs, backbone weights) is loaded instead."""
    key = cache_key(params, train_pairs, held_out, start_policy)
    kept = Path(params.cache_dir, key) if params.cache_dir else None
    if kept is not None and (kept / REPORT).is_file():
        log.info("reward model: reusing %s (same settings, pairs and backbone)", kept)
        return ModelAndTokenizer(*load_reward_model(str(kept))), json.loads((kept / REPORT).read_text())
    untrained, tokenizer = untrained_reward_model(params, start_policy)
    before = pair_accuracy(untrained, tokenizer, held_out, params.max_length)
    with tempfile.TemporaryDirectory() as scratch:
        model = train_reward_model(untrained, tokenizer, train_pairs, params, scratch)
    after = pair_accuracy(model, tokenizer, held_out, params.max_length)
    kinds = sorted({p["kind"] for p in held_out})
    per_kind = {k: bootstrap_ci([a for a, p in zip(after, held_out, strict=True) if p["kind"] == k],
                                params.bootstrap_resamples, params.seed) for k in kinds}
    report = {"backbone": params.backbone, "key": key, "pairs": pairs_report,
              "train_pairs": len(train_pairs), "held_out_pairs": len(held_out),
              "synthetic": any(p["synthetic"] for p in train_pairs + held_out),
              "held_out_accuracy": bootstrap_ci(after, params.bootstrap_resamples, params.seed),
              "held_out_accuracy_by_kind": per_kind,
              "held_out_accuracy_untrained": bootstrap_ci(before, params.bootstrap_resamples, params.seed)}
    bundle = ModelAndTokenizer(model, tokenizer)
    if kept is not None:
        def write(folder: Path) -> None:
            save_model(bundle, folder)
            (folder / REPORT).write_text(json.dumps(report, indent=2))

        replace_atomically(kept, write)  # the report last: a folder without it is not reused
    return bundle, report
