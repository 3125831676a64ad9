"""DPO: the sigmoid loss on (chosen, rejected) pairs against the frozen start policy.

Pairs come from the data where it has a ``rejected`` column (chosen = the reference
y, as in HH-RLHF); otherwise they are synthetic: K answers per prompt sampled from the
start policy, ranked by the shared reward, best against worst, marked ``synthetic``.
Their generation counts towards the generated-sample budget like a rollout's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Annotated, ClassVar, Literal

import torch

from grao_pipeline.alignment.config import Range, TrainConfig
from grao_pipeline.alignment.generation import Sampler
from grao_pipeline.alignment.losses import dpo_loss
from grao_pipeline.alignment.methods.base import (
    BaseMethod,
    member_logps,
    row_columns,
    score,
    start_policy_copy,
)
from grao_pipeline.alignment.methods.registry import MethodSpec, register_method
from grao_pipeline.alignment.rewards import RewardFn
from grao_pipeline.alignment.tokens import encode_completions, encode_prompts


@dataclass
class DPOConfig(TrainConfig):
    """DPO: sigmoid loss on (chosen, rejected) pairs against the frozen starting policy."""

    beta: Annotated[float, Range(gt=0)] = 0.1
    """DPO's β: the inverse temperature of its sigmoid loss (TRL's default). Not GRAO's
    β, which weights the imitation term."""
    batch_size: Annotated[int, Range(ge=1)] = 4
    """Preference pairs per optimiser step."""
    batch_field: ClassVar[str] = "batch_size"
    pair_source: Literal["auto", "dataset", "synthetic"] = "auto"
    """``dataset`` uses the data's rejected answers (HH-RLHF); ``synthetic`` samples
    ``candidates_per_prompt`` answers from the starting policy and pairs the best against
    the worst by reward; ``auto`` = dataset where a ``rejected`` column exists."""
    candidates_per_prompt: Annotated[int, Range(ge=2)] = 4
    """K answers sampled per prompt for synthetic pairs."""
    synthetic_prompts: Annotated[int, Range(ge=1)] = 32
    """Prompts used to build synthetic pairs (budget: K·this generated samples)."""
    temperature: Annotated[float, Range(gt=0)] = 0.7
    """Sampling temperature for synthetic candidates."""


@dataclass
class PairBatch:
    """DPO pairs. ``prompt_ids``/``prompt_mask``: [B, P]; ``completion_ids``/``mask``:
    [B, 2, C] (chosen, rejected); ``start_logps``: [B, 2] summed log-probs under the
    frozen start policy."""

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    start_logps: torch.Tensor


@torch.no_grad()
def synthetic_pairs(model, tokenizer, reward: RewardFn, rows: list[dict], candidates: int,
                    max_new_tokens: int, temperature: float, batch_prompts: int = 8
                    ) -> tuple[list[dict], dict]:
    """Preference pairs from the policy itself: K samples per prompt, ranked by the
    reward, best as chosen and worst as rejected. Prompts whose K rewards are all equal
    give no pair and are counted. Every pair is marked ``synthetic``."""
    pairs, ties = [], 0
    sampler = Sampler.around(model)
    for start in range(0, len(rows), batch_prompts):
        chunk = rows[start:start + batch_prompts]
        encoded = encode_prompts(tokenizer, [r["prompt"] for r in chunk])
        samples = sampler.sample(tokenizer, encoded, candidates, max_new_tokens, temperature)
        scores = score(reward, [r["prompt"] for r in chunk for _ in range(candidates)], samples.texts,
                       [r["reference"] for r in chunk for _ in range(candidates)],
                       row_columns(chunk, candidates, (~samples.truncated).tolist())
                       ).view(len(chunk), candidates)
        for i, row in enumerate(chunk):
            best, worst = int(scores[i].argmax()), int(scores[i].argmin())
            if scores[i, best] == scores[i, worst]:
                ties += 1
                continue
            pairs.append({"prompt": row["prompt"], "chosen": samples.texts[i * candidates + best],
                          "rejected": samples.texts[i * candidates + worst], "synthetic": True,
                          "reward_margin": float(scores[i, best] - scores[i, worst])})
    return pairs, {"prompts": len(rows), "pairs": len(pairs), "tied_prompts": ties,
                   "samples": len(rows) * candidates}


class DPOMethod(BaseMethod):
    """DPO; rows need ``prompt``, ``chosen`` and ``rejected`` (``training_rows`` makes them)."""

    name = "dpo"

    def __init__(self, tokenizer, reward: RewardFn | None, cfg: DPOConfig):
        super().__init__()
        self.tokenizer = tokenizer
        self.reward = reward
        self.cfg = cfg
        self.rows_per_step = cfg.batch_size
        self.start_policy = None

    def training_rows(self, model, rows: list[dict]) -> tuple[list[dict], dict]:
        cfg = self.cfg
        has_rejected = bool(rows) and "rejected" in rows[0]
        source = cfg.pair_source if cfg.pair_source != "auto" else (
            "dataset" if has_rejected else "synthetic")
        if source == "dataset":
            if not has_rejected:
                raise KeyError("dpo.pair_source is 'dataset' but the training data has no "
                               "'rejected' column; use 'synthetic' or map one in "
                               "data_processing.columns")
            pairs = [{"prompt": r["prompt"], "chosen": r["reference"], "rejected": r["rejected"],
                      "synthetic": False} for r in rows]
            return pairs, {"source": "dataset", "pairs": len(pairs), "samples": 0}
        order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(cfg.seed))
        chosen_rows = [rows[i] for i in order[:cfg.synthetic_prompts].tolist()]
        torch.manual_seed(cfg.seed)
        model.eval()
        pairs, report = synthetic_pairs(model, self.tokenizer, self.reward, chosen_rows,
                                        cfg.candidates_per_prompt, cfg.max_completion_tokens,
                                        cfg.temperature)
        if not pairs:
            raise ValueError("no synthetic DPO pairs: every prompt's candidates tied on reward")
        return pairs, {"source": "synthetic", **report}

    def setup(self, model) -> None:
        self.start_policy = start_policy_copy(model)

    def prepare(self, model, rows: list[dict]) -> tuple[PairBatch, dict]:
        tok, b = self.tokenizer, len(rows)
        prompt = encode_prompts(tok, [r["prompt"] for r in rows])
        ids, mask = encode_completions(tok, [r["chosen"] for r in rows] + [r["rejected"] for r in rows],
                                       self.cfg.max_completion_tokens, tok.eos_token_id)
        completion_ids = torch.stack([ids[:b], ids[b:]], dim=1)
        completion_mask = torch.stack([mask[:b], mask[b:]], dim=1)
        with torch.no_grad():
            start = member_logps(self.start_policy, prompt.ids, prompt.mask, completion_ids,
                                 completion_mask).cpu()
        batch = PairBatch(prompt.ids, prompt.mask, completion_ids, completion_mask,
                          (start * completion_mask).sum(-1))
        return batch, {"tokens": int(completion_mask.sum())}

    def loss(self, model, batch: PairBatch) -> tuple[torch.Tensor, dict]:
        logps = member_logps(model, batch.prompt_ids, batch.prompt_mask,
                             batch.completion_ids, batch.completion_mask)
        summed = (logps * batch.completion_mask).sum(-1)
        return dpo_loss(summed[:, 0], summed[:, 1], batch.start_logps[:, 0], batch.start_logps[:, 1],
                        self.cfg.beta)


def build_dpo(tokenizer, reward: RewardFn | None, cfg: DPOConfig, model) -> DPOMethod:
    return DPOMethod(tokenizer, reward, cfg)


def fit_dpo_budget(cfg: DPOConfig, samples: int) -> DPOConfig:
    """Synthetic pairs drawn from as many generated samples as the on-policy methods get."""
    return dataclasses.replace(cfg, synthetic_prompts=max(1, samples // cfg.candidates_per_prompt))


register_method(MethodSpec("dpo", DPOConfig, build_dpo, fit_budget=fit_dpo_budget,
                           title=lambda cfg: f"DPO (pairs: {cfg.pair_source})"))
