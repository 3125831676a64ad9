"""PPO: a value head on the policy trunk, GAE over completion tokens, clipped ratio,
and a per-token KL penalty to the frozen start policy inside the reward. The sequence
reward lands on the last completion token. Advantages are whitened over the whole
step (every rank's tokens)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch

from grao_pipeline.alignment.advantages import gae, whiten
from grao_pipeline.alignment.config import Range, RolloutConfig
from grao_pipeline.alignment.losses import ppo_loss
from grao_pipeline.alignment.methods.base import RolloutMethod, global_sum, member_logps
from grao_pipeline.alignment.methods.grpo import SampleBatch
from grao_pipeline.alignment.methods.registry import MethodSpec, register_method
from grao_pipeline.alignment.rewards import RewardFn


@dataclass
class PPOConfig(RolloutConfig):
    """PPO: value head on the policy trunk, GAE, clipped ratio, and the KL to the start
    policy as a per-token penalty −kl_coef·(log π − log π_start) in the reward."""

    gamma: Annotated[float, Range(gt=0, le=1)] = 1.0
    """Discount over completion tokens."""
    gae_lambda: Annotated[float, Range(ge=0, le=1)] = 0.95
    """GAE λ."""
    clip_eps: Annotated[float, Range(gt=0, lt=1)] = 0.2
    """Policy ratio clip."""
    value_clip: Annotated[float, Range(gt=0)] = 0.2
    """Value prediction clip around the rollout-time values."""
    value_coef: Annotated[float, Range(ge=0)] = 0.1
    """Weight of the value loss."""

    def __post_init__(self) -> None:
        super().__post_init__()


class ValueHead(torch.nn.Module):
    """V(s_t) from the policy's last hidden state: one linear layer, zero-initialised
    so the first advantages are the plain (KL-shaped) returns."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = torch.nn.Linear(hidden_size, 1)
        torch.nn.init.zeros_(self.linear.weight)
        torch.nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden.float()).squeeze(-1)


class PPOMethod(RolloutMethod):
    """PPO with the shared rollout."""

    name = "ppo"

    def __init__(self, tokenizer, reward: RewardFn, cfg: PPOConfig, hidden_size: int):
        super().__init__(tokenizer, reward, cfg)
        self.needs_start_policy = True  # the KL in the reward, logged even at kl_coef 0
        self.extra_modules = [ValueHead(hidden_size)]

    def _logps_and_values(self, model, batch: SampleBatch):
        logps, hidden = member_logps(model, batch.prompt_ids, batch.prompt_mask,
                                     batch.completion_ids, batch.completion_mask, return_hidden=True)
        return logps, self.extra_modules[0](hidden)

    def prepare(self, model, rows: list[dict]) -> tuple[SampleBatch, dict]:
        cfg = self.cfg
        rollout = self.rollout(rows)
        mask = rollout.sample_mask
        batch = SampleBatch(rollout.encoded.ids, rollout.encoded.mask, rollout.sample_ids, mask,
                            advantages=torch.zeros(mask.shape), total_prompts=len(rows))
        with torch.no_grad():
            old_logps, old_values = (t.cpu() for t in self._logps_and_values(model, batch))
            start_logps = member_logps(self.start_policy, batch.prompt_ids, batch.prompt_mask,
                                       batch.completion_ids, mask).cpu()
        kl = (old_logps - start_logps) * mask
        token_rewards = -cfg.kl_coef * kl
        last = (mask.sum(-1) - 1).clamp(min=0)
        token_rewards.scatter_add_(-1, last.unsqueeze(-1), rollout.sample_rewards.unsqueeze(-1))
        b, g, c = mask.shape
        advantages, returns = gae(token_rewards.view(b * g, c), old_values.view(b * g, c),
                                  mask.view(b * g, c), cfg.gamma, cfg.gae_lambda)
        batch.advantages = whiten(advantages, mask.view(b * g, c), reduce_sum=global_sum).view(b, g, c)
        batch.returns = returns.view(b, g, c)
        batch.old_logps, batch.old_values = old_logps, old_values
        metrics = {**rollout.metrics, "tokens": int(mask.sum()),
                   "kl_to_start": (kl.sum() / mask.sum().clamp(min=1)).item(),
                   "value/mean": (old_values * mask).sum().item() / max(int(mask.sum()), 1)}
        return batch, metrics

    def loss(self, model, batch: SampleBatch) -> tuple[torch.Tensor, dict]:
        logps, values = self._logps_and_values(model, batch)
        return ppo_loss(logps, batch.old_logps, batch.completion_mask, batch.advantages, values,
                        batch.old_values, batch.returns, self.cfg.clip_eps, self.cfg.value_clip,
                        self.cfg.value_coef)


def build_ppo(tokenizer, reward: RewardFn, cfg: PPOConfig, model) -> PPOMethod:
    return PPOMethod(tokenizer, reward, cfg, model.config.hidden_size)


register_method(MethodSpec("ppo", PPOConfig, build_ppo, title=lambda cfg: "PPO"))
