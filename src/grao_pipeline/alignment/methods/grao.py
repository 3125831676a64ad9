"""GRAO (docs/method.md) and its three ablations.

A step: sample G completions per prompt, score them and the reference y with the same
reward, group-relative advantages over {o_1..o_G, y}, then the three-term loss of
``losses.grao_loss`` on one forward over samples and y together (on their prompt's
KV cache, the prompt run once: ``member_logps``). One optimiser step
per rollout by default (on-policy, no ratio); the k3 KL to the start policy and a
clipped ratio over several epochs are optional and off.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch

from grao_pipeline.alignment.advantages import group_advantages
from grao_pipeline.alignment.config import Range, RolloutConfig, require
from grao_pipeline.alignment.losses import grao_loss, k3_kl
from grao_pipeline.alignment.methods.base import RolloutMethod, member_logps, pad_to
from grao_pipeline.alignment.methods.registry import MethodSpec, register_method
from grao_pipeline.alignment.rewards import RewardFn
from grao_pipeline.alignment.tokens import encode_completions


@dataclass
class GRAOMethodConfig(RolloutConfig):
    """GRAO (docs/method.md): rollout, group advantages, three-term loss. (TRL users: the
    adapter in ``integrations/trl.py`` has its own ``GRAOMethodConfig``, a TRL ``GRPOConfig``.)"""

    beta: Annotated[float, Range(ge=0)] = 0.5
    """β: weight of the imitation term Â_y·ℓ(y) (paper: 0.5)."""
    lam: Annotated[float, Range(ge=0)] = 0.6
    """λ: weight of the alignment regulariser Â_i·(ℓ(o_i) − ℓ(y)) (paper: 0.6)."""
    exploration: bool = True
    """Keep the exploration term Â_i·ℓ(o_i); False is the "no exploration" ablation."""
    include_reference_in_group: bool = True
    """Compute the group mean/std over {o_1..o_G, y} (default) or over the samples only."""
    clip_eps: Annotated[float, Range(gt=0, lt=1)] = 0.2
    """Ratio clip range used when ``epochs_per_rollout`` > 1."""
    use_reference: bool = True
    """False takes y out of the objective: no imitation, and the regulariser keeps only
    λ·Â_i·ℓ(o_i), so the model learns from its own samples alone (the "no imitation"
    ablation, ``grao_no_imitation``). Needs β = 0 and ``include_reference_in_group:
    false``, since both would otherwise still use y."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.use_reference:
            require(self.beta == 0, self, "beta",
                    "weights the imitation term, which use_reference: false removes; set beta: 0")
            require(not self.include_reference_in_group, self, "include_reference_in_group",
                    "puts y's reward into the group statistics, so y would still shape every "
                    "advantage; with use_reference: false set include_reference_in_group: false")


@dataclass
class GroupBatch:
    """A GRAO rollout batch; B prompts, G samples, the reference y as member G.

    ``prompt_ids``, ``prompt_mask``: [B, P]
    ``completion_ids``, ``completion_mask``: [B, G+1, C] (index G is y)
    ``advantages``: [B, G]; ``reference_advantages``: [B]
    ``old_logps``: [B, G, C] rollout-time log-probs (only for several epochs per rollout)
    ``start_logps``: [B, G, C] log-probs under the frozen start policy (only with KL)
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    advantages: torch.Tensor
    reference_advantages: torch.Tensor
    old_logps: torch.Tensor | None = None
    start_logps: torch.Tensor | None = None


class GRAOMethod(RolloutMethod):
    """GRAO: imitate y when the samples score worse, explore, transcend y when they beat it."""

    name = "grao"

    @property
    def reads_reference(self) -> bool:
        return self.cfg.use_reference

    def prepare(self, model, rows: list[dict]) -> tuple[GroupBatch, dict]:
        cfg, tok = self.cfg, self.tokenizer
        g = cfg.num_generations
        rollout = self.rollout(rows)
        adv = group_advantages(rollout.sample_rewards, rollout.reference_rewards,
                               cfg.include_reference_in_group, cfg.adv_eps)
        reference_ids, reference_mask = encode_completions(
            tok, [r["reference"] for r in rows], cfg.max_completion_tokens, tok.eos_token_id)
        width = max(rollout.sample_ids.shape[-1], reference_ids.shape[1])
        completion_ids = torch.cat([pad_to(rollout.sample_ids, width, tok.pad_token_id),
                                    pad_to(reference_ids, width, tok.pad_token_id).unsqueeze(1)], dim=1)
        completion_mask = torch.cat([pad_to(rollout.sample_mask, width, 0),
                                     pad_to(reference_mask, width, 0).unsqueeze(1)], dim=1)
        batch = GroupBatch(rollout.encoded.ids, rollout.encoded.mask, completion_ids,
                           completion_mask, adv.samples, adv.reference)
        with torch.no_grad():
            args = (batch.prompt_ids, batch.prompt_mask, completion_ids[:, :g], completion_mask[:, :g])
            if cfg.epochs_per_rollout > 1:
                batch.old_logps = member_logps(model, *args)
            if self.start_policy is not None:
                batch.start_logps = member_logps(self.start_policy, *args)
        metrics = {**rollout.metrics, "frac_reward_zero_std": adv.frac_reward_zero_std,
                   "tokens": int(completion_mask.sum())}
        if cfg.use_reference:  # without y in the objective, Â_y steers nothing
            metrics["frac_reference_advantage_negative"] = float((adv.reference < 0).float().mean())
        return batch, metrics

    def loss(self, model, batch: GroupBatch) -> tuple[torch.Tensor, dict]:
        g = self.cfg.num_generations
        logps = member_logps(model, batch.prompt_ids, batch.prompt_mask,
                             batch.completion_ids, batch.completion_mask)
        sample_logps = logps[:, :g]
        kl = (k3_kl(sample_logps, batch.start_logps)
              if batch.start_logps is not None else None)
        return grao_loss(
            sample_logps, batch.completion_mask[:, :g], logps[:, g], batch.completion_mask[:, g],
            batch.advantages, batch.reference_advantages, beta=self.cfg.beta, lam=self.cfg.lam,
            exploration=self.cfg.exploration, old_sample_logps=batch.old_logps,
            clip_eps=self.cfg.clip_eps, kl_per_token=kl, kl_coef=self.cfg.kl_coef,
            use_reference=self.cfg.use_reference)


def build_grao(tokenizer, reward: RewardFn, cfg: GRAOMethodConfig, model) -> GRAOMethod:
    return GRAOMethod(tokenizer, reward, cfg)


def _title(cfg: GRAOMethodConfig) -> str:
    return (f"GRAO (β={cfg.beta}, λ={cfg.lam}, G={cfg.num_generations}, exploration={cfg.exploration}"
            + ("" if cfg.use_reference else ", without y") + ")")


register_method(MethodSpec("grao", GRAOMethodConfig, build_grao, title=_title))
# The paper's Table 3 ablations: GRAO's own parameters with one term switched off.
# "No imitation" removes y from the objective entirely; β = 0 alone (grao_beta_zero)
# still pulls on ℓ(y) through the regulariser (docs/method.md, "What the objective does").
for _name, _change in (("grao_no_imitation", {"beta": 0.0, "use_reference": False,
                                              "include_reference_in_group": False}),
                       ("grao_beta_zero", {"beta": 0.0}),
                       ("grao_no_regulariser", {"lam": 0.0}),
                       ("grao_no_exploration", {"exploration": False})):
    register_method(MethodSpec(_name, GRAOMethodConfig, build_grao, params="grao", overrides=_change,
                               title=_title))
