"""The ``Sampler``: what generation runs on and how it decodes, decided once.

Built from the policy when a run starts (``build_sampler``), it holds the sampling copy
(``packing.sampling_copy``: a bf16, packed copy where bf16 is native, else the policy
itself) and the decode loop chosen for that copy (``decoding.choose_loop``: the fused
kernel, the lean Llama loop, or transformers' ``generate``), and logs the choice once.
Training's rollouts and evaluation's greedy answers both sample through it; nothing
downstream asks the hardware or the model again. It knows nothing of training: the
training loop calls ``release`` after a rollout and ``sync`` after an update.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from grao_pipeline.alignment.generation import decoding
from grao_pipeline.alignment.generation.packing import release_copy, sampling_copy, sync_copy
from grao_pipeline.alignment.generation.sampling import Samples, sample_completions
from grao_pipeline.alignment.tokens import EncodedPrompts

logger = logging.getLogger(__name__)
_announced: set[tuple[str, str]] = set()


@dataclass
class Sampler:
    """``model``: what generation runs on; ``loop``: its decode loop (``decoding.GENERATE``,
    ``LEAN`` or ``FUSED``); ``why``: the loop in words."""

    model: torch.nn.Module
    loop: str
    why: str

    @classmethod
    def around(cls, model: torch.nn.Module) -> Sampler:
        """Generation on ``model`` itself (no copy), with the loop it supports."""
        return cls(model, *decoding.choose_loop(model))

    def sample(self, tokenizer, prompts: EncodedPrompts, num_generations: int,
               max_new_tokens: int, temperature: float = 1.0, do_sample: bool = True,
               min_new_tokens: int = 0) -> Samples:
        """``sampling.sample_completions`` on this sampler's model and loop."""
        key = (type(self.model).__name__, self.why)
        if key not in _announced:
            _announced.add(key)
            logger.info("decoding %s with %s", *key)
        return sample_completions(self.model, tokenizer, prompts, num_generations, max_new_tokens,
                                  temperature, do_sample, min_new_tokens, loop=self.loop)

    def release(self) -> None:
        """Free the packed weights until the next ``sync`` (they are stale once the
        policy's update starts)."""
        release_copy(self.model)

    def sync(self, policy: torch.nn.Module) -> None:
        """Copy the policy's current weights into the sampling copy."""
        sync_copy(self.model, policy)


def build_sampler(policy: torch.nn.Module, sampling_dtype: str = "auto", rows: int = 8,
                  decode_kernel: str = "auto") -> Sampler:
    """The sampler for ``policy``: its sampling copy for a decode batch of ``rows``
    (prompts × G) under ``sampling_dtype`` and ``decode_kernel`` (``RolloutConfig``),
    and the loop that copy supports."""
    return Sampler.around(sampling_copy(policy, sampling_dtype, rows, decode_kernel))
