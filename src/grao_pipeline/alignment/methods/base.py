"""What the methods share: ``BaseMethod`` and ``RolloutMethod`` (the sampler and the
frozen start policy), the rollout (sample G per prompt, score them and y with the same
reward) and per-member log-probs.

Names, used everywhere: the *reference* is the dataset answer y; the *start policy* is
the frozen copy of the policy training began from (KL penalties, DPO). TRL calls the
latter "ref"; this project never does.

Rewards see every dataset column, as TRL's ``reward_kwargs``: a row's keys other than
``prompt`` and ``reference`` reach each reward as ``**columns``, one value per scored
completion.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from accelerate.state import PartialState
from accelerate.utils import reduce

from grao_pipeline.alignment.config import RolloutConfig
from grao_pipeline.alignment.diagnostics import distinct_n, echoes, empties, repeats, same_answers
from grao_pipeline.alignment.generation import Sampler, Samples, build_sampler
from grao_pipeline.alignment.logprobs import shared_prompt_token_logps, shares_prompt, token_logps
from grao_pipeline.alignment.lora import AdaptersDisabled, has_adapters
from grao_pipeline.alignment.rewards import RewardFn, checked_scores
from grao_pipeline.alignment.tokens import EncodedPrompts, encode_prompts

# (sampler, tokenizer, encoded prompts, prompt texts, G, max new tokens, temperature) -> Samples.
# Tests swap in pre-drawn completions keyed by prompt, so ranks can be compared exactly.
SampleFn = Callable[..., Samples]


def default_sample_fn(sampler: Sampler, tokenizer, encoded: EncodedPrompts, prompts: list[str],
                      num_generations: int, max_new_tokens: int, temperature: float) -> Samples:
    return sampler.sample(tokenizer, encoded, num_generations, max_new_tokens, temperature)


def row_columns(rows: list[dict], repeat: int = 1, finished: list[bool] | None = None) -> dict[str, list]:
    """Every column beyond prompt and reference, each value repeated ``repeat`` times
    (one per scored completion of its prompt), plus ``finished``: whether each scored
    answer ended with EOS (None: they are references, finished by definition)."""
    names = [k for k in (rows[0] if rows else {}) if k not in ("prompt", "reference")]
    columns = {k: [r[k] for r in rows for _ in range(repeat)] for k in names}
    columns["finished"] = [True] * (len(rows) * repeat) if finished is None else list(finished)
    return columns


def score(reward: RewardFn, prompts: list[str], completions: list[str], references: list[str],
          columns: dict[str, list]) -> torch.Tensor:
    """[N] float32 rewards; a reward returning the wrong count or a non-number is named."""
    return torch.tensor(checked_scores(reward, prompts, completions, references, columns),
                        dtype=torch.float32)


def global_sum(value: float | torch.Tensor) -> torch.Tensor:
    """Sum over every process (a no-op on one process)."""
    tensor = torch.as_tensor(value, dtype=torch.float64, device=PartialState().device)
    return reduce(tensor, "sum").cpu()


def start_policy_copy(model):
    """A frozen snapshot of the policy training starts from (KL penalty, DPO); with LoRA,
    the policy itself with its adapters disabled, which costs no memory."""
    if has_adapters(model):
        return AdaptersDisabled(model)
    return copy.deepcopy(model).eval().requires_grad_(False)


def pad_to(t: torch.Tensor, width: int, value: int) -> torch.Tensor:
    return torch.nn.functional.pad(t, (0, width - t.shape[-1]), value=value)


@dataclass
class Rollout:
    """G samples for each of B prompts, scored. ``sample_ids``/``sample_mask``: [B, G, C];
    ``sample_rewards``: [B, G]; ``reference_rewards``: [B] rewards of the references y."""

    encoded: EncodedPrompts
    sample_ids: torch.Tensor
    sample_mask: torch.Tensor
    sample_rewards: torch.Tensor
    reference_rewards: torch.Tensor
    metrics: dict


def rollout_and_score(sampler: Sampler, tokenizer, reward: RewardFn, rows: list[dict],
                      cfg: RolloutConfig, sample_fn: SampleFn = default_sample_fn) -> Rollout:
    """Sample G completions per prompt (one batched generate), score them and the
    references with the same reward, and time both."""
    g = cfg.num_generations
    prompts = [r["prompt"] for r in rows]
    references = [r["reference"] for r in rows]
    t0 = time.perf_counter()
    encoded = encode_prompts(tokenizer, prompts)
    samples = sample_fn(sampler, tokenizer, encoded, prompts, g, cfg.max_completion_tokens,
                        cfg.temperature)
    t1 = time.perf_counter()
    sample_rewards = score(reward, [p for p in prompts for _ in range(g)], samples.texts,
                           [y for y in references for _ in range(g)],
                           row_columns(rows, g, (~samples.truncated).tolist())).view(-1, g)
    reference_rewards = score(reward, prompts, references, references, row_columns(rows))
    t2 = time.perf_counter()
    b, c = len(rows), samples.ids.shape[1]
    metrics = {
        "reward/mean": sample_rewards.mean().item(),
        "reward/std": sample_rewards.std(correction=0).item(),
        "reward/reference": reference_rewards.mean().item(),
        "reward/beats_reference": (sample_rewards > reference_rewards[:, None]).float().mean().item(),
        "completion_length": samples.mask.sum(1).float().mean().item(),
        "frac_truncated": samples.num_truncated / len(samples.texts),
        "echo_share": float(echoes([p for p in prompts for _ in range(g)], samples.texts).mean()),
        "empty_share": float(empties(samples.texts).mean()),
        "repeat_share": float(repeats(samples.texts).mean()),
        "same_answer_share": float(same_answers(samples.texts).mean()),
        "distinct_2": distinct_n(samples.texts, 2),
        "samples": len(samples.texts),
        "time/generate": t1 - t0,
        "time/score": t2 - t1,
    }
    return Rollout(encoded, samples.ids.view(b, g, c), samples.mask.view(b, g, c),
                   sample_rewards, reference_rewards, metrics)


def member_logps(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                 completion_ids: torch.Tensor, completion_mask: torch.Tensor,
                 return_hidden: bool = False):
    """Per-token log-probs of M completions per prompt, each prompt run once where the
    model allows it (``shares_prompt``), else as B·M whole rows.

    ``completion_*``: [B, M, C]; returns [B, M, C] (and hidden states [B, M, C, H])."""
    b, m, c = completion_ids.shape
    device = next(model.parameters()).device
    completion_ids = completion_ids.reshape(b * m, c).to(device)
    completion_mask = completion_mask.reshape(b * m, c).to(device)
    prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
    if m > 1 and shares_prompt(model):
        out = shared_prompt_token_logps(model, prompt_ids, prompt_mask, completion_ids,
                                        completion_mask, return_hidden=return_hidden)
    else:
        out = token_logps(model, prompt_ids.repeat_interleave(m, 0), prompt_mask.repeat_interleave(m, 0),
                          completion_ids, completion_mask, return_hidden=return_hidden)
    if return_hidden:
        logps, hidden = out
        return logps.view(b, m, c), hidden.reshape(b, m, c, -1)
    return out.view(b, m, c)


class BaseMethod:
    """Defaults of the ``trainer.Method`` hooks: nothing to set up, no extra modules,
    train on the rows as given."""

    name = "base"
    updates_per_batch = 1
    reads_reference = False

    def __init__(self) -> None:
        self.extra_modules: list[torch.nn.Module] = []

    def training_rows(self, model, rows: list[dict]) -> tuple[list[dict], dict]:
        """The rows this method trains on, and a report of their making (DPO builds
        preference pairs here)."""
        return rows, {}

    def setup(self, model) -> None:
        pass

    def after_update(self, model) -> None:
        pass


class RolloutMethod(BaseMethod):
    """Shared plumbing of on-policy methods: the sampler, the frozen start policy, re-sync.

    ``prepare`` runs on the unwrapped model (generation and no-grad forwards); ``loss``
    on the accelerate-prepared one, so DDP synchronises its gradients.
    """

    name = "rollout"

    def __init__(self, tokenizer, reward: RewardFn, cfg: RolloutConfig):
        super().__init__()
        self.tokenizer = tokenizer
        self.reward = reward
        self.cfg = cfg
        self.rows_per_step = cfg.prompts_per_step
        self.updates_per_batch = cfg.epochs_per_rollout
        # The frozen start policy costs a model copy: kept only where a KL term uses it.
        self.needs_start_policy = cfg.kl_coef > 0
        self.sampler: Sampler | None = None
        self.start_policy = None
        self.sample_fn: SampleFn = default_sample_fn

    def setup(self, model) -> None:
        self.sampler = build_sampler(model, self.cfg.sampling_dtype,
                                     self.cfg.prompts_per_step * self.cfg.num_generations,
                                     self.cfg.decode_kernel)
        if self.needs_start_policy:
            self.start_policy = start_policy_copy(model)

    def rollout(self, rows: list[dict]) -> Rollout:
        rollout = rollout_and_score(self.sampler, self.tokenizer, self.reward, rows, self.cfg,
                                    self.sample_fn)
        self.sampler.release()  # stale from the update on; after_update re-packs
        return rollout

    def after_update(self, model) -> None:
        self.sampler.sync(model)
