"""GRPO + μ·SFT on the reference y: the CHORD/SRFT family's "just add SFT to RL".

The GRPO step of ``grpo.py`` unchanged (same rollout, advantages over the G samples,
clipped ratio, k3 KL), plus μ times the length-normalised NLL of y for each prompt:

    loss = grpo_loss(samples) + μ · sft_loss(y)

Simplifications: μ is fixed (CHORD anneals it; SRFT weights it by entropy); y's
log-probs take a forward of their own (GRAO shares one). μ = 0 is GRPO exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch

from grao_pipeline.alignment.config import Range
from grao_pipeline.alignment.losses import sft_loss
from grao_pipeline.alignment.methods.base import member_logps
from grao_pipeline.alignment.methods.grpo import GRPOConfig, GRPOMethod, SampleBatch
from grao_pipeline.alignment.methods.registry import MethodSpec, register_method
from grao_pipeline.alignment.rewards import RewardFn
from grao_pipeline.alignment.tokens import encode_completions


@dataclass
class GRPOSFTConfig(GRPOConfig):
    """GRPO plus a fixed μ times the SFT loss on the reference y (``methods/grpo_sft.py``)."""

    sft_coef: Annotated[float, Range(ge=0)] = 0.1
    """μ: weight of the length-normalised NLL of y added to the GRPO loss (0 = GRPO)."""


@dataclass
class SampleAndReferenceBatch(SampleBatch):
    """A GRPO batch plus the references: ``reference_ids``/``reference_mask`` [B, C_y]."""

    reference_ids: torch.Tensor | None = None
    reference_mask: torch.Tensor | None = None


class GRPOSFTMethod(GRPOMethod):
    name = "grpo_sft"

    @property
    def reads_reference(self) -> bool:
        return self.cfg.sft_coef > 0

    batch_cls = SampleAndReferenceBatch

    def group(self, rollout, rows: list[dict]):
        adv, extra, extra_tokens = super().group(rollout, rows)
        reference_ids, reference_mask = encode_completions(
            self.tokenizer, [r["reference"] for r in rows], self.cfg.max_completion_tokens,
            self.tokenizer.eos_token_id)
        return adv, {**extra, "reference_ids": reference_ids, "reference_mask": reference_mask}, extra_tokens

    def loss(self, model, batch: SampleAndReferenceBatch) -> tuple[torch.Tensor, dict]:
        pg_loss, metrics = super().loss(model, batch)
        reference_logps = member_logps(model, batch.prompt_ids, batch.prompt_mask,
                                       batch.reference_ids[:, None], batch.reference_mask[:, None])
        nll, _ = sft_loss(reference_logps[:, 0], batch.reference_mask.to(reference_logps.device))
        loss = pg_loss + self.cfg.sft_coef * nll
        return loss, {**metrics, "loss": loss.item(), "pg_loss": pg_loss.item(),
                      "sft_nll": nll.item()}


def build_grpo_sft(tokenizer, reward: RewardFn, cfg: GRPOSFTConfig, model) -> GRPOSFTMethod:
    return GRPOSFTMethod(tokenizer, reward, cfg)


register_method(MethodSpec("grpo_sft", GRPOSFTConfig, build_grpo_sft,
                           title=lambda cfg: f"GRPO + {cfg.sft_coef:g}·SFT"))
