"""Prompt encoding, sampling G completions per prompt, EOS masks and per-token log-probs.

Layout convention: prompts are left-padded to a common length P, so every completion
starts at the same column; completions are right-padded to a common length C. The
completion mask keeps tokens up to and including the first EOS, so the policy is
trained to stop. A completion with no EOS within C tokens is *truncated*.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import GenerationConfig, PreTrainedModel


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


def prompt_token_lengths(tokenizer, prompts: list[str]) -> list[int]:
    """Token count of each chat-formatted prompt."""
    encoded = tokenizer(format_prompts(tokenizer, prompts), add_special_tokens=False)
    return [len(ids) for ids in encoded["input_ids"]]


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


@dataclass
class Samples:
    """Completions for B prompts, G each, row order prompt-major (prompt b, sample g).

    ``ids``, ``mask``: [B*G, C]; ``texts``: B*G decoded completions (EOS stripped);
    ``truncated``: [B*G] bool, no EOS within the length budget.
    """

    ids: torch.Tensor
    mask: torch.Tensor
    texts: list[str]
    truncated: torch.Tensor

    @property
    def num_truncated(self) -> int:
        return int(self.truncated.sum())


@torch.no_grad()  # not inference_mode: these tensors are reused as inputs under autograd
def sample_completions(model: PreTrainedModel, tokenizer, prompts: EncodedPrompts,
                       num_generations: int, max_new_tokens: int, temperature: float = 1.0,
                       do_sample: bool = True, min_new_tokens: int = 0) -> Samples:
    """Sample ``num_generations`` completions per prompt in one batched ``generate`` call.

    Pure temperature sampling: top-k and top-p are switched off explicitly so the
    sampled distribution is the policy's own. ``min_new_tokens`` > 0 suppresses EOS
    before that many tokens (benchmarks use it to fix the work per step).
    """
    eos = eos_ids(tokenizer, model)
    config = GenerationConfig(
        do_sample=do_sample, temperature=temperature if do_sample else None,
        top_k=0 if do_sample else None, top_p=1.0 if do_sample else None,
        max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens or None,
        num_return_sequences=num_generations,
        eos_token_id=eos, pad_token_id=tokenizer.pad_token_id, use_cache=True)
    device = next(model.parameters()).device
    out = model.generate(input_ids=prompts.ids.to(device),
                         attention_mask=prompts.mask.to(device), generation_config=config)
    ids = out[:, prompts.ids.shape[1]:].cpu()
    mask = completion_mask(ids, eos)
    ids = ids.masked_fill(mask == 0, tokenizer.pad_token_id)
    truncated = ~torch.isin(ids, torch.tensor(eos)).any(dim=1)
    texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
    return Samples(ids, mask, [t.strip() for t in texts], truncated)


def completion_logits(model: PreTrainedModel, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                      completion_ids: torch.Tensor, completion_mask_: torch.Tensor,
                      return_hidden: bool = False):
    """Logits predicting each completion token: [N, C, V] in the model's dtype (and,
    with ``return_hidden``, the last hidden state at the same positions, [N, C, H]).

    Positions are counted from the first real prompt token (left padding), as in
    ``generate``. Only the C+1 last logits are computed (``logits_to_keep``), which
    skips the LM head on prompt positions. Masked positions hold garbage; mask them.
    """
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attention_mask = torch.cat([prompt_mask, completion_mask_], dim=1)
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    c = completion_ids.shape[1]
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                logits_to_keep=c + 1, use_cache=False, output_hidden_states=return_hidden)
    logits = out.logits[:, :-1]  # position t predicts token t+1
    if return_hidden:
        return logits, out.hidden_states[-1][:, -(c + 1):-1]
    return logits


def selective_log_softmax(logits: torch.Tensor, index: torch.Tensor, chunk_rows: int = 4) -> torch.Tensor:
    """``log_softmax(logits)`` at ``index`` only: the picked logit minus the logsumexp,
    in float32, a few rows at a time. Never holds a full-vocabulary log-softmax (or a
    float32 copy of bf16 logits) for the whole batch: at a 152k vocabulary, 16 × 1,024
    tokens of those would be 10 GB. ``logits`` [N, C, V], ``index`` [N, C] -> [N, C]."""
    rows = []
    for s in range(0, logits.shape[0], chunk_rows):
        chunk = logits[s:s + chunk_rows]
        picked = torch.gather(chunk, -1, index[s:s + chunk_rows].unsqueeze(-1)).squeeze(-1).float()
        rows.append(picked - torch.logsumexp(chunk.float(), dim=-1))
    return torch.cat(rows)


def token_logps(model: PreTrainedModel, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                completion_ids: torch.Tensor, completion_mask_: torch.Tensor,
                return_hidden: bool = False):
    """Per-token log π(c_t | prompt, c_<t) of completions, float32. All inputs [N, ·];
    returns [N, C] (and hidden states [N, C, H] with ``return_hidden``)."""
    out = completion_logits(model, prompt_ids, prompt_mask, completion_ids, completion_mask_,
                            return_hidden)
    logits, hidden = out if return_hidden else (out, None)
    logps = selective_log_softmax(logits, completion_ids)
    return (logps, hidden) if return_hidden else logps


def sequence_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Length-normalised sum over each row's unmasked tokens. [..., T] -> [...]."""
    mask = mask.to(values.dtype)
    return (values * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
