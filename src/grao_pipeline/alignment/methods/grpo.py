"""GRPO (TRL 1.16's formulas): group advantages over the G samples only (y unused),
clipped ratio, k3 KL to the frozen start policy, four loss aggregations."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import torch
from accelerate.state import PartialState

from grao_pipeline.alignment.advantages import GroupAdvantages, group_advantages
from grao_pipeline.alignment.config import Range, RolloutConfig
from grao_pipeline.alignment.losses import grpo_loss
from grao_pipeline.alignment.methods.base import RolloutMethod, global_sum, member_logps
from grao_pipeline.alignment.methods.registry import MethodSpec, register_method
from grao_pipeline.alignment.rewards import RewardFn


@dataclass
class GRPOConfig(RolloutConfig):
    """GRPO: group advantages over the samples only, clipped ratio, and the k3 KL to the
    frozen start policy weighted by ``kl_coef``."""

    clip_eps_low: Annotated[float, Range(gt=0, lt=1)] = 0.2
    """Ratio clip 1 − eps_low."""
    clip_eps_high: Annotated[float, Range(gt=0)] = 0.2
    """Ratio clip 1 + eps_high (DAPO raises this, e.g. 0.28)."""
    aggregation: Literal["grpo", "bnpo", "dr_grpo", "dapo"] = "grpo"
    """Per-token loss -> scalar: see ``losses.grpo_loss``."""
    std_correction: Literal[0, 1] = 1
    """Group std convention: 1 = sample std (TRL's), 0 = population std (GRAO's)."""
    scale_rewards: bool = True
    """Divide by (std + adv_eps); False = Dr. GRPO's unscaled advantages."""

    def __post_init__(self) -> None:
        super().__post_init__()


@dataclass
class SampleBatch:
    """A GRPO/PPO rollout batch: B prompts, G samples each.

    ``prompt_ids``/``prompt_mask``: [B, P]; ``completion_ids``/``completion_mask``,
    ``old_logps``, ``start_logps``, ``old_values``, ``returns``: [B, G, C];
    ``advantages``: [B, G] (GRPO) or [B, G, C] (PPO). ``token_normaliser`` and
    ``total_prompts`` describe the whole step, so chunks and ranks normalise like it.
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    advantages: torch.Tensor
    old_logps: torch.Tensor | None = None
    start_logps: torch.Tensor | None = None
    old_values: torch.Tensor | None = None
    returns: torch.Tensor | None = None
    token_normaliser: float = 0.0
    total_prompts: int = 0


def flat(t: torch.Tensor | None) -> torch.Tensor | None:
    """[B, G, ...] -> [B·G, ...]."""
    return None if t is None else t.flatten(0, 1)


class GRPOMethod(RolloutMethod):
    """GRPO with the shared rollout."""

    name = "grpo"

    batch_cls = SampleBatch

    def group(self, rollout, rows: list[dict]) -> tuple[GroupAdvantages, dict, float]:
        """The samples' advantages, extra batch fields and extra tokens in the step's
        normaliser: GRPO has none; variants that use y (grpo_sft, luffy) add them."""
        cfg = self.cfg
        adv = group_advantages(rollout.sample_rewards, None, eps=cfg.adv_eps,
                               std_correction=cfg.std_correction, scale=cfg.scale_rewards)
        return adv, {}, 0.0

    def prepare(self, model, rows: list[dict]) -> tuple[SampleBatch, dict]:
        cfg = self.cfg
        rollout = self.rollout(rows)
        adv, extra, extra_tokens = self.group(rollout, rows)
        # DAPO divides by the whole step's tokens. DDP averages gradients over ranks,
        # so each rank divides by (global tokens / ranks) to give the 1-process update.
        tokens = float(rollout.sample_mask.sum()) + extra_tokens
        normaliser = float(global_sum(tokens)) / PartialState().num_processes
        batch = self.batch_cls(rollout.encoded.ids, rollout.encoded.mask, rollout.sample_ids,
                               rollout.sample_mask, adv.samples, token_normaliser=normaliser,
                               total_prompts=len(rows), **extra)
        with torch.no_grad():
            args = (batch.prompt_ids, batch.prompt_mask, batch.completion_ids, batch.completion_mask)
            if cfg.epochs_per_rollout > 1:
                batch.old_logps = member_logps(model, *args)
            if self.start_policy is not None:
                batch.start_logps = member_logps(self.start_policy, *args)
        metrics = {**rollout.metrics, "frac_reward_zero_std": adv.frac_reward_zero_std,
                   "tokens": int(tokens)}
        return batch, metrics

    def loss(self, model, batch: SampleBatch) -> tuple[torch.Tensor, dict]:
        cfg = self.cfg
        logps = member_logps(model, batch.prompt_ids, batch.prompt_mask,
                             batch.completion_ids, batch.completion_mask)
        # The trainer weights a chunk by its share of the step's prompts; dapo's
        # normaliser is per step, so scale it by the same share.
        share = batch.prompt_ids.shape[0] / batch.total_prompts
        return grpo_loss(flat(logps), flat(batch.completion_mask), flat(batch.advantages),
                         old_logps=flat(batch.old_logps), start_logps=flat(batch.start_logps),
                         kl_coef=cfg.kl_coef, clip_eps_low=cfg.clip_eps_low,
                         clip_eps_high=cfg.clip_eps_high, aggregation=cfg.aggregation,
                         max_completion_length=cfg.max_completion_tokens,
                         num_items_in_batch=batch.token_normaliser * share)


def build_grpo(tokenizer, reward: RewardFn, cfg: GRPOConfig, model) -> GRPOMethod:
    return GRPOMethod(tokenizer, reward, cfg)


register_method(MethodSpec("grpo", GRPOConfig, build_grpo,
                           title=lambda cfg: f"GRPO ({cfg.aggregation})"))
