"""One small strategy per method: what a step needs and which loss it calls.

Each method prepares a batch dataclass whose tensors have a leading prompt dimension
(so the trainer can split it into chunks of whole prompts) and computes its loss with
the pure functions of ``losses.py``. GRAO, GRPO and PPO share one rollout
(``rollout_and_score``): same sampler, same decoding, same reward.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch

from grao_pipeline.alignment.advantages import gae, group_advantages, whiten
from grao_pipeline.alignment.config import (
    DPOConfig,
    GRAOConfig,
    GRPOConfig,
    PPOConfig,
    RolloutConfig,
    SFTConfig,
)
from grao_pipeline.alignment.losses import dpo_loss, grao_loss, grpo_loss, k3_kl, ppo_loss, sft_loss
from grao_pipeline.alignment.rewards import RewardFn
from grao_pipeline.alignment.rollout import (
    EncodedPrompts,
    encode_completions,
    encode_prompts,
    sample_completions,
    token_logps,
)
from grao_pipeline.alignment.trainer import bf16_supported


def sampling_copy(model, sampling_dtype: str):
    """The model generation runs on: a bf16 copy where bf16 is native (about 2× faster
    sampling), else the policy itself. Re-sync a copy with ``sync_sampler``."""
    use_bf16 = sampling_dtype == "bfloat16" or (sampling_dtype == "auto" and bf16_supported())
    return copy.deepcopy(model).to(torch.bfloat16).eval() if use_bf16 else model


def sync_sampler(sampler, model) -> None:
    if sampler is not model:
        sampler.load_state_dict(model.state_dict())  # copy_ casts to the sampler's dtype


def frozen_copy(model):
    """A frozen snapshot of the starting policy (KL and DPO reference)."""
    return copy.deepcopy(model).eval().requires_grad_(False)


def _pad_to(t: torch.Tensor, width: int, value: int) -> torch.Tensor:
    return torch.nn.functional.pad(t, (0, width - t.shape[-1]), value=value)


@dataclass
class AnswerBatch:
    """Prompts with one answer each. ``prompt_ids``/``prompt_mask``: [B, P];
    ``answer_ids``/``answer_mask``: [B, C]."""

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    answer_ids: torch.Tensor
    answer_mask: torch.Tensor


def encode_answers(tokenizer, prompts: list[str], answers: list[str],
                   max_tokens: int) -> AnswerBatch:
    """Chat-formatted prompts with their answers as EOS-terminated completions."""
    prompt = encode_prompts(tokenizer, prompts)
    ids, mask = encode_completions(tokenizer, answers, max_tokens, tokenizer.eos_token_id)
    return AnswerBatch(prompt.ids, prompt.mask, ids, mask)


class SFTMethod:
    """Supervised fine-tuning on the reference answers (length-normalised NLL)."""

    name = "sft"
    updates_per_batch = 1
    extra_modules: list = []

    def __init__(self, tokenizer, cfg: SFTConfig):
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.rows_per_step = cfg.batch_size

    def setup(self, model) -> None:
        pass

    def prepare(self, model, rows: list[dict]) -> tuple[AnswerBatch, dict]:
        batch = encode_answers(self.tokenizer, [r["prompt"] for r in rows],
                               [r["reference"] for r in rows], self.cfg.max_completion_tokens)
        return batch, {"tokens": int(batch.answer_mask.sum())}

    def loss(self, model, batch: AnswerBatch) -> tuple[torch.Tensor, dict]:
        logps = token_logps(model, batch.prompt_ids, batch.prompt_mask,
                            batch.answer_ids, batch.answer_mask)
        return sft_loss(logps, batch.answer_mask)

    def after_update(self, model) -> None:
        pass


@dataclass
class Rollout:
    """G samples for each of B prompts, scored. ``sample_ids``/``sample_mask``: [B, G, C];
    ``sample_rewards``: [B, G]; ``ref_rewards``: [B] rewards of the references y."""

    encoded: EncodedPrompts
    sample_ids: torch.Tensor
    sample_mask: torch.Tensor
    sample_rewards: torch.Tensor
    ref_rewards: torch.Tensor
    metrics: dict


def rollout_and_score(sampler, tokenizer, reward: RewardFn, rows: list[dict],
                      cfg: RolloutConfig) -> Rollout:
    """Sample G completions per prompt (one batched generate), score them and the
    references with the same reward, and time both."""
    g = cfg.num_generations
    prompts = [r["prompt"] for r in rows]
    references = [r["reference"] for r in rows]
    t0 = time.perf_counter()
    encoded = encode_prompts(tokenizer, prompts)
    samples = sample_completions(sampler, tokenizer, encoded, g, cfg.max_completion_tokens,
                                 cfg.temperature)
    t1 = time.perf_counter()
    sample_rewards = torch.tensor(reward(
        [p for p in prompts for _ in range(g)], samples.texts,
        [y for y in references for _ in range(g)])).view(-1, g)
    ref_rewards = torch.tensor(reward(prompts, references, references))
    t2 = time.perf_counter()
    b, c = len(rows), samples.ids.shape[1]
    metrics = {
        "reward/mean": sample_rewards.mean().item(),
        "reward/std": sample_rewards.std(correction=0).item(),
        "reward/reference": ref_rewards.mean().item(),
        "reward/beats_reference": (sample_rewards > ref_rewards[:, None]).float().mean().item(),
        "completion_length": samples.mask.sum(1).float().mean().item(),
        "frac_truncated": samples.num_truncated / len(samples.texts),
        "samples": len(samples.texts),
        "time/generate": t1 - t0,
        "time/score": t2 - t1,
    }
    return Rollout(encoded, samples.ids.view(b, g, c), samples.mask.view(b, g, c),
                   sample_rewards, ref_rewards, metrics)


def member_logps(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                 completion_ids: torch.Tensor, completion_mask: torch.Tensor,
                 return_hidden: bool = False):
    """Per-token log-probs of M completions per prompt in one forward.

    ``completion_*``: [B, M, C]; returns [B, M, C] (and hidden states [B, M, C, H])."""
    b, m, c = completion_ids.shape
    out = token_logps(model, prompt_ids.repeat_interleave(m, 0), prompt_mask.repeat_interleave(m, 0),
                      completion_ids.reshape(b * m, c), completion_mask.reshape(b * m, c),
                      return_hidden=return_hidden)
    if return_hidden:
        logps, hidden = out
        return logps.view(b, m, c), hidden.reshape(b, m, c, -1)
    return out.view(b, m, c)


class _RolloutMethod:
    """Shared plumbing of on-policy methods: sampler copy, frozen reference, re-sync."""

    extra_modules: list = []
    needs_frozen = False

    def __init__(self, tokenizer, reward: RewardFn, cfg: RolloutConfig):
        self.tokenizer = tokenizer
        self.reward = reward
        self.cfg = cfg
        self.rows_per_step = cfg.prompts_per_step
        self.updates_per_batch = cfg.epochs_per_rollout
        self.sampler = None
        self.frozen = None

    def setup(self, model) -> None:
        self.sampler = sampling_copy(model, self.cfg.sampling_dtype)
        if self.needs_frozen:
            self.frozen = frozen_copy(model)

    def after_update(self, model) -> None:
        sync_sampler(self.sampler, model)


@dataclass
class GroupBatch:
    """A GRAO rollout batch; B prompts, G samples, the reference y as member G.

    ``prompt_ids``, ``prompt_mask``: [B, P]
    ``completion_ids``, ``completion_mask``: [B, G+1, C] (index G is y)
    ``advantages``: [B, G]; ``ref_advantages``: [B]
    ``old_logps``: [B, G, C] rollout-time log-probs (only for several epochs per rollout)
    ``frozen_logps``: [B, G, C] log-probs under the frozen reference policy (only with KL)
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    advantages: torch.Tensor
    ref_advantages: torch.Tensor
    old_logps: torch.Tensor | None = None
    frozen_logps: torch.Tensor | None = None


class GRAOMethod(_RolloutMethod):
    """GRAO (../shared/GRAO.md §2): sample G per prompt, score them and y, group
    advantages, three-term loss; one optimiser step per rollout by default."""

    name = "grao"

    def __init__(self, tokenizer, reward: RewardFn, cfg: GRAOConfig):
        super().__init__(tokenizer, reward, cfg)
        self.needs_frozen = cfg.kl_coef > 0

    def prepare(self, model, rows: list[dict]) -> tuple[GroupBatch, dict]:
        cfg, tok = self.cfg, self.tokenizer
        g = cfg.num_generations
        rollout = rollout_and_score(self.sampler, tok, self.reward, rows, cfg)
        adv = group_advantages(rollout.sample_rewards, rollout.ref_rewards,
                               cfg.include_reference_in_group, cfg.adv_eps)
        ref_ids, ref_mask = encode_completions(tok, [r["reference"] for r in rows],
                                               cfg.max_completion_tokens, tok.eos_token_id)
        width = max(rollout.sample_ids.shape[-1], ref_ids.shape[1])
        completion_ids = torch.cat([_pad_to(rollout.sample_ids, width, tok.pad_token_id),
                                    _pad_to(ref_ids, width, tok.pad_token_id).unsqueeze(1)], dim=1)
        completion_mask = torch.cat([_pad_to(rollout.sample_mask, width, 0),
                                     _pad_to(ref_mask, width, 0).unsqueeze(1)], dim=1)
        batch = GroupBatch(rollout.encoded.ids, rollout.encoded.mask, completion_ids,
                           completion_mask, adv.samples, adv.reference)
        with torch.no_grad():
            args = (batch.prompt_ids, batch.prompt_mask, completion_ids[:, :g], completion_mask[:, :g])
            if cfg.epochs_per_rollout > 1:
                batch.old_logps = member_logps(model, *args)
            if self.frozen is not None:
                batch.frozen_logps = member_logps(self.frozen, *args)
        metrics = {**rollout.metrics, "frac_reward_zero_std": adv.frac_reward_zero_std,
                   "tokens": int(completion_mask.sum())}
        return batch, metrics

    def loss(self, model, batch: GroupBatch) -> tuple[torch.Tensor, dict]:
        g = self.cfg.num_generations
        logps = member_logps(model, batch.prompt_ids, batch.prompt_mask,
                             batch.completion_ids, batch.completion_mask)
        sample_logps = logps[:, :g]
        kl = (k3_kl(sample_logps, batch.frozen_logps)
              if batch.frozen_logps is not None else None)
        return grao_loss(
            sample_logps, batch.completion_mask[:, :g], logps[:, g], batch.completion_mask[:, g],
            batch.advantages, batch.ref_advantages, beta=self.cfg.beta, lam=self.cfg.lam,
            exploration=self.cfg.exploration, old_sample_logps=batch.old_logps,
            clip_eps=self.cfg.clip_eps, kl_per_token=kl, kl_coef=self.cfg.kl_coef)


@dataclass
class SampleBatch:
    """A GRPO/PPO rollout batch: B prompts, G samples each.

    ``prompt_ids``/``prompt_mask``: [B, P]; ``completion_ids``/``completion_mask``,
    ``old_logps``, ``ref_logps``, ``old_values``, ``returns``: [B, G, C];
    ``advantages``: [B, G] (GRPO) or [B, G, C] (PPO). ``total_tokens`` and
    ``total_prompts`` describe the whole batch, so chunks can normalise like it.
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    advantages: torch.Tensor
    old_logps: torch.Tensor | None = None
    ref_logps: torch.Tensor | None = None
    old_values: torch.Tensor | None = None
    returns: torch.Tensor | None = None
    total_tokens: float = 0.0
    total_prompts: int = 0


class GRPOMethod(_RolloutMethod):
    """GRPO: group advantages over the G samples (y is not used), clipped ratio, k3 KL."""

    name = "grpo"

    def __init__(self, tokenizer, reward: RewardFn, cfg: GRPOConfig):
        super().__init__(tokenizer, reward, cfg)
        self.needs_frozen = cfg.kl_coef > 0

    def prepare(self, model, rows: list[dict]) -> tuple[SampleBatch, dict]:
        cfg = self.cfg
        rollout = rollout_and_score(self.sampler, self.tokenizer, self.reward, rows, cfg)
        adv = group_advantages(rollout.sample_rewards, None, eps=cfg.adv_eps,
                               std_correction=cfg.std_correction, scale=cfg.scale_rewards)
        batch = SampleBatch(rollout.encoded.ids, rollout.encoded.mask, rollout.sample_ids,
                            rollout.sample_mask, adv.samples,
                            total_tokens=float(rollout.sample_mask.sum()), total_prompts=len(rows))
        with torch.no_grad():
            args = (batch.prompt_ids, batch.prompt_mask, batch.completion_ids, batch.completion_mask)
            if cfg.epochs_per_rollout > 1:
                batch.old_logps = member_logps(model, *args)
            if self.frozen is not None:
                batch.ref_logps = member_logps(self.frozen, *args)
        metrics = {**rollout.metrics, "frac_reward_zero_std": adv.frac_reward_zero_std,
                   "tokens": int(batch.completion_mask.sum())}
        return batch, metrics

    def loss(self, model, batch: SampleBatch) -> tuple[torch.Tensor, dict]:
        cfg = self.cfg
        logps = member_logps(model, batch.prompt_ids, batch.prompt_mask,
                             batch.completion_ids, batch.completion_mask)

        def flat(t):
            return None if t is None else t.flatten(0, 1)

        # dapo normalises by the whole batch's tokens; the trainer then weights this chunk
        # by its share of prompts, so scale the normaliser by that share.
        share = batch.prompt_ids.shape[0] / batch.total_prompts
        return grpo_loss(flat(logps), flat(batch.completion_mask), flat(batch.advantages),
                         old_logps=flat(batch.old_logps), ref_logps=flat(batch.ref_logps),
                         kl_coef=cfg.kl_coef, clip_eps_low=cfg.clip_eps_low,
                         clip_eps_high=cfg.clip_eps_high, aggregation=cfg.aggregation,
                         max_completion_length=cfg.max_completion_tokens,
                         num_items_in_batch=batch.total_tokens * share)


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


class PPOMethod(_RolloutMethod):
    """PPO: shared-trunk value head, GAE over completion tokens, clipped ratio, and a
    per-token KL penalty to the frozen starting policy inside the reward. The sequence
    reward lands on the last completion token."""

    name = "ppo"
    needs_frozen = True

    def __init__(self, tokenizer, reward: RewardFn, cfg: PPOConfig, hidden_size: int):
        super().__init__(tokenizer, reward, cfg)
        self.value_head = ValueHead(hidden_size)
        self.extra_modules = [self.value_head]

    def _logps_and_values(self, model, batch: SampleBatch, value_head):
        logps, hidden = member_logps(model, batch.prompt_ids, batch.prompt_mask,
                                     batch.completion_ids, batch.completion_mask, return_hidden=True)
        return logps, value_head(hidden)

    def prepare(self, model, rows: list[dict]) -> tuple[SampleBatch, dict]:
        cfg = self.cfg
        rollout = rollout_and_score(self.sampler, self.tokenizer, self.reward, rows, cfg)
        mask = rollout.sample_mask
        batch = SampleBatch(rollout.encoded.ids, rollout.encoded.mask, rollout.sample_ids, mask,
                            advantages=torch.zeros(mask.shape), total_prompts=len(rows))
        with torch.no_grad():
            old_logps, old_values = self._logps_and_values(model, batch, self.extra_modules[0])
            ref_logps = member_logps(self.frozen, batch.prompt_ids, batch.prompt_mask,
                                     batch.completion_ids, mask)
        kl = (old_logps - ref_logps) * mask
        token_rewards = -cfg.kl_coef * kl
        last = (mask.sum(-1) - 1).clamp(min=0)
        token_rewards.scatter_add_(-1, last.unsqueeze(-1), rollout.sample_rewards.unsqueeze(-1))
        b, g, c = mask.shape
        advantages, returns = gae(token_rewards.view(b * g, c), old_values.view(b * g, c),
                                  mask.view(b * g, c), cfg.gamma, cfg.gae_lambda)
        batch.advantages = whiten(advantages, mask.view(b * g, c)).view(b, g, c)
        batch.returns = returns.view(b, g, c)
        batch.old_logps, batch.old_values = old_logps, old_values
        metrics = {**rollout.metrics, "tokens": int(mask.sum()),
                   "kl_to_ref": (kl.sum() / mask.sum().clamp(min=1)).item(),
                   "value/mean": (old_values * mask).sum().item() / max(int(mask.sum()), 1)}
        return batch, metrics

    def loss(self, model, batch: SampleBatch) -> tuple[torch.Tensor, dict]:
        logps, values = self._logps_and_values(model, batch, self.extra_modules[0])
        return ppo_loss(logps, batch.old_logps, batch.completion_mask, batch.advantages, values,
                        batch.old_values, batch.returns, self.cfg.clip_eps, self.cfg.value_clip,
                        self.cfg.value_coef)


@dataclass
class PairBatch:
    """DPO pairs. ``prompt_ids``/``prompt_mask``: [B, P]; ``completion_ids``/``mask``:
    [B, 2, C] (chosen, rejected); ``ref_logps``: [B, 2] summed log-probs under the
    frozen reference."""

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    ref_logps: torch.Tensor


class DPOMethod:
    """DPO with the sigmoid loss against the frozen starting policy. Rows need
    ``prompt``, ``chosen`` and ``rejected`` (see ``synthetic_pairs``)."""

    name = "dpo"
    updates_per_batch = 1
    extra_modules: list = []

    def __init__(self, tokenizer, cfg: DPOConfig):
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.rows_per_step = cfg.batch_size
        self.frozen = None

    def setup(self, model) -> None:
        self.frozen = frozen_copy(model)

    def prepare(self, model, rows: list[dict]) -> tuple[PairBatch, dict]:
        tok, b = self.tokenizer, len(rows)
        prompt = encode_prompts(tok, [r["prompt"] for r in rows])
        ids, mask = encode_completions(tok, [r["chosen"] for r in rows] + [r["rejected"] for r in rows],
                                       self.cfg.max_completion_tokens, tok.eos_token_id)
        completion_ids = torch.stack([ids[:b], ids[b:]], dim=1)
        completion_mask = torch.stack([mask[:b], mask[b:]], dim=1)
        with torch.no_grad():
            ref = member_logps(self.frozen, prompt.ids, prompt.mask, completion_ids, completion_mask)
        batch = PairBatch(prompt.ids, prompt.mask, completion_ids, completion_mask,
                          (ref * completion_mask).sum(-1))
        return batch, {"tokens": int(completion_mask.sum())}

    def loss(self, model, batch: PairBatch) -> tuple[torch.Tensor, dict]:
        logps = member_logps(model, batch.prompt_ids, batch.prompt_mask,
                             batch.completion_ids, batch.completion_mask)
        summed = (logps * batch.completion_mask).sum(-1)
        return dpo_loss(summed[:, 0], summed[:, 1], batch.ref_logps[:, 0], batch.ref_logps[:, 1],
                        self.cfg.beta)

    def after_update(self, model) -> None:
        pass


@torch.no_grad()
def synthetic_pairs(model, tokenizer, reward: RewardFn, rows: list[dict], candidates: int,
                    max_new_tokens: int, temperature: float, batch_prompts: int = 8
                    ) -> tuple[list[dict], dict]:
    """Preference pairs from the policy itself: K samples per prompt, ranked by the
    reward, best as chosen and worst as rejected. Prompts whose K rewards are all equal
    give no pair and are counted. Every pair is marked ``synthetic``."""
    pairs, ties = [], 0
    for start in range(0, len(rows), batch_prompts):
        chunk = rows[start:start + batch_prompts]
        encoded = encode_prompts(tokenizer, [r["prompt"] for r in chunk])
        samples = sample_completions(model, tokenizer, encoded, candidates, max_new_tokens, temperature)
        scores = torch.tensor(reward([r["prompt"] for r in chunk for _ in range(candidates)],
                                     samples.texts,
                                     [r["reference"] for r in chunk for _ in range(candidates)]))
        scores = scores.view(len(chunk), candidates)
        for i, row in enumerate(chunk):
            best, worst = int(scores[i].argmax()), int(scores[i].argmin())
            if scores[i, best] == scores[i, worst]:
                ties += 1
                continue
            pairs.append({"prompt": row["prompt"], "chosen": samples.texts[i * candidates + best],
                          "rejected": samples.texts[i * candidates + worst], "synthetic": True,
                          "reward_margin": float(scores[i, best] - scores[i, worst])})
    return pairs, {"prompts": len(rows), "pairs": len(pairs), "tied_prompts": ties,
                   "generated_samples": len(rows) * candidates}
