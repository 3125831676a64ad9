"""LUFFY (arXiv 2504.14945): learning from an off-policy reference inside the group.

The reference y joins the G samples as member G+1: advantages are normalised over all
G+1 rewards. The G samples keep GRPO's clipped surrogate; y's tokens get the shaped,
unclipped term −Â_y · π/(π + γ) (``losses.shaped_off_policy_loss``), which keeps the
gradient on y's low-probability tokens large. Both are summed over tokens and divided
by the step's token count, y's tokens included (token-mean).

Simplifications: y's log-probs take a forward of their own; no entropy term; the
sampled rollout is on-policy (one update per rollout by default). ``off_policy:
false`` drops y from the group and the loss: GRPO with token-mean aggregation, exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import torch

from grao_pipeline.alignment.advantages import group_advantages
from grao_pipeline.alignment.config import Range
from grao_pipeline.alignment.losses import shaped_off_policy_loss
from grao_pipeline.alignment.methods.base import member_logps
from grao_pipeline.alignment.methods.grpo import GRPOConfig, GRPOMethod
from grao_pipeline.alignment.methods.grpo_sft import SampleAndReferenceBatch
from grao_pipeline.alignment.methods.registry import MethodSpec, register_method
from grao_pipeline.alignment.rewards import RewardFn
from grao_pipeline.alignment.tokens import encode_completions


@dataclass
class LUFFYConfig(GRPOConfig):
    """LUFFY (arXiv 2504.14945, ``methods/luffy.py``): y joins the group as an off-policy
    member with a shaped, unclipped ratio."""

    aggregation: Literal["dapo"] = "dapo"
    """Token-mean over the step's tokens, y's included (LUFFY's): y's tokens share the
    step's token normaliser, so no other aggregation is offered."""
    off_policy: bool = True
    """y in the group and in the loss; false gives GRPO with token-mean aggregation."""
    shaping_gamma: Annotated[float, Range(gt=0)] = 0.1
    """γ of the shaping f(π) = π / (π + γ) on y's tokens."""


@dataclass
class OffPolicyBatch(SampleAndReferenceBatch):
    """Plus ``reference_advantages`` [B]: y's advantage within its G+1 group."""

    reference_advantages: torch.Tensor | None = None


class LUFFYMethod(GRPOMethod):
    name = "luffy"

    @property
    def reads_reference(self) -> bool:
        return self.cfg.off_policy

    batch_cls = OffPolicyBatch

    def group(self, rollout, rows: list[dict]):
        cfg, tok = self.cfg, self.tokenizer
        adv = group_advantages(rollout.sample_rewards,
                               rollout.reference_rewards if cfg.off_policy else None,
                               include_reference=True, eps=cfg.adv_eps,
                               std_correction=cfg.std_correction, scale=cfg.scale_rewards)
        reference_ids, reference_mask = encode_completions(
            tok, [r["reference"] for r in rows], cfg.max_completion_tokens, tok.eos_token_id)
        extra = {"reference_ids": reference_ids, "reference_mask": reference_mask,
                 "reference_advantages": adv.reference}
        return adv, extra, float(reference_mask.sum()) if cfg.off_policy else 0.0

    def loss(self, model, batch: OffPolicyBatch) -> tuple[torch.Tensor, dict]:
        pg_loss, metrics = super().loss(model, batch)
        if not self.cfg.off_policy:
            return pg_loss, metrics
        share = batch.prompt_ids.shape[0] / batch.total_prompts
        reference_logps = member_logps(model, batch.prompt_ids, batch.prompt_mask,
                                       batch.reference_ids[:, None], batch.reference_mask[:, None])
        off_loss, off_metrics = shaped_off_policy_loss(
            reference_logps[:, 0], batch.reference_mask.to(reference_logps.device),
            batch.reference_advantages.to(reference_logps.device), self.cfg.shaping_gamma,
            batch.token_normaliser * share)
        loss = pg_loss + off_loss
        return loss, {**metrics, **off_metrics, "loss": loss.item(), "pg_loss": pg_loss.item()}


def build_luffy(tokenizer, reward: RewardFn, cfg: LUFFYConfig, model) -> LUFFYMethod:
    return LUFFYMethod(tokenizer, reward, cfg)


register_method(MethodSpec("luffy", LUFFYConfig, build_luffy,
                           title=lambda cfg: f"LUFFY (γ = {cfg.shaping_gamma:g})"))
