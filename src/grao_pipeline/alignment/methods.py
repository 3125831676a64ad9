"""One small strategy per method: what a step needs and which loss it calls.

Each method prepares a batch dataclass whose tensors have a leading prompt dimension
(so the trainer can split it into chunks of whole prompts) and computes its loss with
the pure functions of ``losses.py``.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch

from grao_pipeline.alignment.advantages import group_advantages
from grao_pipeline.alignment.config import GRAOConfig, SFTConfig
from grao_pipeline.alignment.losses import grao_loss, k3_kl, sft_loss
from grao_pipeline.alignment.rewards import RewardFn
from grao_pipeline.alignment.rollout import (
    encode_completions,
    encode_prompts,
    sample_completions,
    token_logps,
)
from grao_pipeline.alignment.trainer import bf16_supported


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


def _pad_to(t: torch.Tensor, width: int, value: int) -> torch.Tensor:
    return torch.nn.functional.pad(t, (0, width - t.shape[-1]), value=value)


def group_logps(model, batch: GroupBatch) -> torch.Tensor:
    """Per-token log-probs of every group member, one forward. Returns [B, G+1, C]."""
    b, members, c = batch.completion_ids.shape
    logps = token_logps(model, batch.prompt_ids.repeat_interleave(members, 0),
                        batch.prompt_mask.repeat_interleave(members, 0),
                        batch.completion_ids.reshape(b * members, c),
                        batch.completion_mask.reshape(b * members, c))
    return logps.view(b, members, c)


class GRAOMethod:
    """GRAO (../shared/GRAO.md §2): sample G per prompt, score them and y, group
    advantages, three-term loss; one optimiser step per rollout by default."""

    name = "grao"

    def __init__(self, tokenizer, reward: RewardFn, cfg: GRAOConfig):
        self.tokenizer = tokenizer
        self.reward = reward
        self.cfg = cfg
        self.rows_per_step = cfg.prompts_per_step
        self.updates_per_batch = cfg.epochs_per_rollout
        self.sampler = None
        self.frozen = None

    def setup(self, model) -> None:
        use_bf16 = (self.cfg.sampling_dtype == "bfloat16"
                    or (self.cfg.sampling_dtype == "auto" and bf16_supported()))
        # A separate bf16 copy halves generation time on bf16 CPUs; fp32 shares the policy.
        self.sampler = copy.deepcopy(model).to(torch.bfloat16).eval() if use_bf16 else model
        if self.cfg.kl_coef > 0:
            self.frozen = copy.deepcopy(model).eval().requires_grad_(False)

    def after_update(self, model) -> None:
        if self.sampler is not model:
            self.sampler.load_state_dict(model.state_dict())  # copy_ casts to bf16

    def prepare(self, model, rows: list[dict]) -> tuple[GroupBatch, dict]:
        cfg, tok = self.cfg, self.tokenizer
        g = cfg.num_generations
        prompts = [r["prompt"] for r in rows]
        references = [r["reference"] for r in rows]

        t0 = time.perf_counter()
        encoded = encode_prompts(tok, prompts)
        samples = sample_completions(self.sampler, tok, encoded, g, cfg.max_completion_tokens,
                                     cfg.temperature)
        t1 = time.perf_counter()
        repeated = [p for p in prompts for _ in range(g)]
        sample_rewards = torch.tensor(self.reward(
            repeated, samples.texts, [y for y in references for _ in range(g)])).view(-1, g)
        ref_rewards = torch.tensor(self.reward(prompts, references, references))
        t2 = time.perf_counter()

        adv = group_advantages(sample_rewards, ref_rewards, cfg.include_reference_in_group,
                               cfg.adv_eps)
        ref_ids, ref_mask = encode_completions(tok, references, cfg.max_completion_tokens,
                                               tok.eos_token_id)
        width = max(samples.ids.shape[1], ref_ids.shape[1])
        b = len(rows)
        completion_ids = torch.cat([
            _pad_to(samples.ids, width, tok.pad_token_id).view(b, g, width),
            _pad_to(ref_ids, width, tok.pad_token_id).unsqueeze(1)], dim=1)
        completion_mask = torch.cat([
            _pad_to(samples.mask, width, 0).view(b, g, width),
            _pad_to(ref_mask, width, 0).unsqueeze(1)], dim=1)
        batch = GroupBatch(encoded.ids, encoded.mask, completion_ids, completion_mask,
                           adv.samples, adv.reference)
        with torch.no_grad():
            if cfg.epochs_per_rollout > 1:
                batch.old_logps = group_logps(model, batch)[:, :g]
            if self.frozen is not None:
                batch.frozen_logps = group_logps(self.frozen, batch)[:, :g]

        sample_lengths = samples.mask.sum(1).float()
        metrics = {
            "reward/mean": sample_rewards.mean().item(),
            "reward/std": sample_rewards.std(correction=0).item(),
            "reward/reference": ref_rewards.mean().item(),
            "reward/beats_reference": (sample_rewards > ref_rewards[:, None]).float().mean().item(),
            "frac_reward_zero_std": adv.frac_reward_zero_std,
            "completion_length": sample_lengths.mean().item(),
            "frac_truncated": samples.num_truncated / len(samples.texts),
            "tokens": int(completion_mask.sum()),
            "time/generate": t1 - t0,
            "time/score": t2 - t1,
        }
        return batch, metrics

    def loss(self, model, batch: GroupBatch) -> tuple[torch.Tensor, dict]:
        g = self.cfg.num_generations
        logps = group_logps(model, batch)
        sample_logps = logps[:, :g]
        kl = (k3_kl(sample_logps, batch.frozen_logps)
              if batch.frozen_logps is not None else None)
        return grao_loss(
            sample_logps, batch.completion_mask[:, :g], logps[:, g], batch.completion_mask[:, g],
            batch.advantages, batch.ref_advantages, beta=self.cfg.beta, lam=self.cfg.lam,
            exploration=self.cfg.exploration, old_sample_logps=batch.old_logps,
            clip_eps=self.cfg.clip_eps, kl_per_token=kl, kl_coef=self.cfg.kl_coef)
