"""Tokens: the chat format of prompts, left-padded prompt batches, answers encoded as
EOS-terminated completions, and the masks that go with them.

Layout convention: prompts are left-padded to a common length P, so every completion
starts at the same column; completions are right-padded to a common length C. The
completion mask keeps tokens up to and including the first EOS, so the policy is
trained to stop. A completion with no EOS within C tokens is *truncated*.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel


@dataclass
class EncodedPrompts:
    """Left-padded chat-formatted prompts. ``ids``, ``mask``: [B, P]."""

    ids: torch.Tensor
    mask: torch.Tensor


def format_prompts(tokenizer, prompts: list[str]) -> list[str]:
    """Wrap each prompt as one user turn of the tokenizer's chat template."""
    return [
        tokenizer.apply_chat_template([{"role": "user", "content": p}],
                                      add_generation_prompt=True, tokenize=False)
        for p in prompts
    ]


# Token counts of chat-formatted prompts already measured, per tokenizer content
# (``_tokenizer_key``). A comparison or a study checks the same ~9,000 training prompts
# once per run, with a tokenizer loaded afresh each time: ~2 s a run on a CPU, most of
# it rendering the chat template prompt by prompt.
_measured: dict[str, dict[str, int]] = {}


def _tokenizer_key(tokenizer) -> str | None:
    """What a prompt's token count depends on: the tokenizer's vocabulary, merges and
    added tokens, its special tokens and its chat template. None for a tokenizer
    without a serialisable backend (a slow tokenizer): never cached."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    parts = (type(tokenizer).__name__, backend.to_str(), str(tokenizer.chat_template),
             str(sorted(tokenizer.special_tokens_map.items())))
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def prompt_token_lengths(tokenizer, prompts: list[str]) -> list[int]:
    """Token count of each chat-formatted prompt."""
    key = _tokenizer_key(tokenizer)
    known = _measured.setdefault(key, {}) if key is not None else {}
    new = sorted(set(prompts) - known.keys())
    if new:
        encoded = tokenizer(format_prompts(tokenizer, new), add_special_tokens=False)
        known.update(zip(new, (len(ids) for ids in encoded["input_ids"]), strict=True))
    return [known[p] for p in prompts]


def check_prompt_lengths(tokenizer, prompts: list[str], max_prompt_tokens: int,
                         max_new_tokens: int, context: int) -> None:
    """Refuse prompts that do not fit, naming the first offender."""
    if max_prompt_tokens + max_new_tokens > context:
        raise ValueError(
            f"max_prompt_tokens ({max_prompt_tokens}) + completion tokens ({max_new_tokens}) "
            f"exceed the model context ({context})")
    for prompt, n in zip(prompts, prompt_token_lengths(tokenizer, prompts), strict=True):
        if n > max_prompt_tokens:
            raise ValueError(
                f"prompt of {n} tokens exceeds max_prompt_tokens={max_prompt_tokens}: "
                f"{prompt[:80]!r}")


def encode_prompts(tokenizer, prompts: list[str]) -> EncodedPrompts:
    """Chat-format and left-pad prompts."""
    batch = tokenizer(format_prompts(tokenizer, prompts), add_special_tokens=False,
                      padding=True, padding_side="left", return_tensors="pt")
    return EncodedPrompts(batch["input_ids"], batch["attention_mask"])


def eos_ids(tokenizer, model: PreTrainedModel | None = None) -> list[int]:
    """Every token id that ends a completion (tokenizer EOS plus generation config EOS)."""
    ids = {tokenizer.eos_token_id}
    if model is not None and model.generation_config.eos_token_id is not None:
        extra = model.generation_config.eos_token_id
        ids.update(extra if isinstance(extra, list) else [extra])
    return sorted(ids)


def completion_mask(completion_ids: torch.Tensor, eos: list[int]) -> torch.Tensor:
    """1 for tokens up to and including the first EOS, 0 after it. [N, C] -> [N, C] long.

    A row without EOS keeps every token (it was truncated at C).
    """
    is_eos = torch.isin(completion_ids, torch.tensor(eos, device=completion_ids.device))
    # eos_before[t] counts EOS strictly before t, so the first EOS itself stays in.
    eos_before = torch.cumsum(is_eos.long(), dim=1) - is_eos.long()
    return (eos_before == 0).long()


def encode_completions(tokenizer, texts: list[str], max_tokens: int,
                       eos_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenise answers (e.g. references y) as completions ending in EOS, right-padded.

    Returns ``ids`` and ``mask``, both [N, C] with C <= max_tokens. Answers longer than
    ``max_tokens`` are cut (and then carry no EOS, like a truncated sample).
    """
    rows = [ids[: max_tokens - 1] + [eos_id] if len(ids) < max_tokens else ids[:max_tokens]
            for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return ids, mask


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted from each row's first real token (rows are left-padded), as
    ``generate`` counts them; padded positions get 0 (their keys are masked anyway)."""
    return (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
