"""Group-relative advantages (GRAO, GRPO) and GAE (PPO).

Choices for GRAO (docs/method.md, "One step", step 3), each explicit here:
- The group is {o_1..o_G, y} by default: the reference answer's reward r_y joins the
  mean and the std. ``include_reference=False`` computes the statistics over the G
  samples only; y still gets an advantage, measured against the samples' statistics.
- The std is the *population* std (divide by the group size, not size − 1);
  ``std_correction=1`` gives the Bessel-corrected std that TRL's GRPO uses.
- Â = (r − mean) / (std + eps).
- A group whose rewards are all equal (std == 0) gets Â = 0 for every member,
  including y, instead of 0 / eps; such groups are reported as ``frac_reward_zero_std``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class GroupAdvantages:
    """``samples``: [B, G]; ``reference``: [B]; ``zero_std``: [B] bool."""

    samples: torch.Tensor
    reference: torch.Tensor
    zero_std: torch.Tensor

    @property
    def frac_reward_zero_std(self) -> float:
        return float(self.zero_std.float().mean())


def group_advantages(sample_rewards: torch.Tensor, reference_rewards: torch.Tensor | None = None,
                     include_reference: bool = True, eps: float = 1e-4,
                     std_correction: int = 0, scale: bool = True) -> GroupAdvantages:
    """Normalise rewards within each prompt's group.

    Args:
        sample_rewards: [B, G] rewards r_i = R(o_i) of the sampled completions.
        reference_rewards: [B] rewards r_y = R(y) of the reference answers; None for
            methods without a reference member (GRPO).
        include_reference: whether y is a member of the group statistics.
        eps: added to the std.
        std_correction: 0 = population std (GRAO), 1 = sample std (TRL's GRPO).
        scale: False leaves advantages as r − mean (Dr. GRPO).
    """
    if reference_rewards is None:
        include_reference = False
        reference_rewards = torch.zeros_like(sample_rewards[:, 0])
    group = (torch.cat([sample_rewards, reference_rewards[:, None]], dim=1)
             if include_reference else sample_rewards)
    mean = group.mean(dim=1, keepdim=True)
    std = group.std(dim=1, keepdim=True, correction=std_correction)
    # Exact equality, not a tolerance: any real spread, however small, is signal.
    zero_std = (group == group[:, :1]).all(dim=1)
    inverse = 1.0 / (std + eps) if scale else torch.ones_like(std)
    scale = torch.where(zero_std[:, None], torch.zeros_like(std), inverse)
    return GroupAdvantages(
        samples=(sample_rewards - mean) * scale,
        reference=((reference_rewards[:, None] - mean) * scale).squeeze(1),
        zero_std=zero_std,
    )


def gae(token_rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
        gamma: float = 1.0, gae_lambda: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over completion tokens. All [N, T].

    Positions after a completion's end (mask 0) have value 0 and stop the recursion.
    Returns (advantages, returns = advantages + values).
    """
    maskf = mask.to(values.dtype)
    values = values * maskf
    advantages = torch.zeros_like(values)
    last = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        next_value = values[:, t + 1] if t + 1 < values.shape[1] else torch.zeros_like(last)
        delta = token_rewards[:, t] + gamma * next_value - values[:, t]
        last = (delta + gamma * gae_lambda * last) * maskf[:, t]
        advantages[:, t] = last
    return advantages, advantages + values


def whiten(values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8,
           reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Zero-mean, unit-variance over the masked entries (masked entries set to 0).

    ``reduce_sum`` sums a statistic over every process, so several ranks whiten with
    the statistics of the whole step, as one process would."""
    total = reduce_sum or (lambda t: t)
    maskf = mask.to(values.dtype)
    n, s = total(torch.stack([maskf.sum(), (values * maskf).sum()]).double()).tolist()
    mean = s / max(n, 1.0)
    var = float(total((((values - mean) * maskf) ** 2).sum().double())) / max(n, 1.0)
    return (values - mean) * torch.rsqrt(torch.tensor(var + eps, dtype=values.dtype)) * maskf
