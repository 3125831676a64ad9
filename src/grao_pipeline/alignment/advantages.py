"""Group-relative advantages (GRAO, GRPO).

Choices (../shared/GRAO.md §2, step 3), each explicit here:
- The group is {o_1..o_G, y} by default: the reference answer's reward r_y joins the
  mean and the std. ``include_reference=False`` computes the statistics over the G
  samples only; y still gets an advantage, measured against the samples' statistics.
- The std is the *population* std (divide by the group size, not size − 1).
- Â = (r − mean) / (std + eps).
- A group whose rewards are all equal (std == 0) gets Â = 0 for every member,
  including y, instead of 0 / eps; such groups are reported as ``frac_reward_zero_std``.
"""

from __future__ import annotations

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


def group_advantages(sample_rewards: torch.Tensor, reference_rewards: torch.Tensor,
                     include_reference: bool = True, eps: float = 1e-4) -> GroupAdvantages:
    """Normalise rewards within each prompt's group.

    Args:
        sample_rewards: [B, G] rewards r_i = R(o_i) of the sampled completions.
        reference_rewards: [B] rewards r_y = R(y) of the reference answers.
        include_reference: whether y is a member of the group statistics.
        eps: added to the std.
    """
    group = (torch.cat([sample_rewards, reference_rewards[:, None]], dim=1)
             if include_reference else sample_rewards)
    mean = group.mean(dim=1, keepdim=True)
    std = group.std(dim=1, keepdim=True, correction=0)
    # Exact equality, not a tolerance: any real spread, however small, is signal.
    zero_std = (group == group[:, :1]).all(dim=1)
    scale = torch.where(zero_std[:, None], torch.zeros_like(std), 1.0 / (std + eps))
    return GroupAdvantages(
        samples=(sample_rewards - mean) * scale,
        reference=((reference_rewards[:, None] - mean) * scale).squeeze(1),
        zero_std=zero_std,
    )
