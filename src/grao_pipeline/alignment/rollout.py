"""Prompt encoding, sampling G completions per prompt, EOS masks and per-token log-probs.

Layout convention: prompts are left-padded to a common length P, so every completion
starts at the same column; completions are right-padded to a common length C. The
completion mask keeps tokens up to and including the first EOS, so the policy is
trained to stop. A completion with no EOS within C tokens is *truncated*.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, PreTrainedModel

from grao_pipeline.alignment import decoding
from grao_pipeline.alignment.moe import is_moe

logger = logging.getLogger(__name__)
_announced: set[tuple[str, str]] = set()


def _announce(model, loop: str) -> None:
    """Logs, once per model class and reason, which decode loop a model gets."""
    key = (type(model).__name__, loop)
    if key not in _announced:
        _announced.add(key)
        logger.info("decoding %s with %s", key[0], loop)


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


class InverseCDFSampling(LogitsProcessor):
    """Draws from softmax(logits / T) by inverse CDF, one uniform per row, and returns
    scores that are 0 at the drawn token and -inf elsewhere, so ``generate`` runs in its
    greedy mode and its argmax takes the draw. A zero-probability token (logit -inf)
    spans an empty CDF interval and is never drawn. On CPU at batch 8 over a 49k
    vocabulary this is ~0.6 ms per decode step, against ~3.5 ms for Gumbel-max (one
    uniform and two logs per vocabulary entry) and ~9 ms for ``torch.multinomial``.

    Works in place on float32 scores (``generate`` hands each step a fresh float32 copy
    of the logits): the CDF is left unnormalised and the uniform scaled by its total
    instead, so no vocabulary-sized tensor is allocated per step."""

    def __init__(self, temperature: float):
        self.temperature = temperature

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        cdf = scores if scores.dtype == torch.float32 else scores.float()
        if self.temperature != 1.0:
            cdf.div_(self.temperature)
        cdf.sub_(cdf.amax(dim=-1, keepdim=True)).exp_().cumsum_(dim=-1)
        # Scaled by the last entry (the total), so rounding cannot leave u past the end.
        u = torch.rand(cdf.shape[0], 1, device=cdf.device) * cdf[:, -1:]
        drawn = torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.shape[1] - 1)
        return cdf.fill_(float("-inf")).scatter_(1, drawn, 0.0)


class SuppressEOS(LogitsProcessor):
    """Sets the EOS logits to -inf until ``min_new_tokens`` tokens exist, in place: a
    few columns written, where ``MinNewTokensLengthLogitsProcessor`` builds a
    vocabulary-sized mask and runs ``where`` over the scores every step."""

    def __init__(self, eos: list[int], prompt_length: int, min_new_tokens: int):
        self.eos = torch.tensor(eos)
        self.until = prompt_length + min_new_tokens

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[1] < self.until:
            scores[:, self.eos.to(scores.device)] = float("-inf")
        return scores


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted from each row's first real token (rows are left-padded), as
    ``generate`` counts them; padded positions get 0 (their keys are masked anyway)."""
    return (attention_mask.cumsum(dim=1) - 1).clamp(min=0)


def prompt_cache(model: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor, repeats: int,
                 embeds: torch.Tensor | None = None):
    """The KV cache of every prompt token but the last, computed once per prompt and
    repeated for its G samples (or M scored members): ``generate`` then runs only the
    last prompt token (it needs one uncached token to predict from) instead of G·P
    prefill positions, and ``shared_prompt_token_logps`` runs it with each member. None
    for one-token prompts. ``embeds``: those tokens' input embeddings [B, P − 1, H],
    where the caller looked them up."""
    if ids.shape[1] < 2:
        return None
    tokens = {"input_ids": ids[:, :-1]} if embeds is None else {"inputs_embeds": embeds}
    cache = model(**tokens, attention_mask=mask[:, :-1], position_ids=position_ids(mask[:, :-1]),
                  use_cache=True, logits_to_keep=1).past_key_values
    cache.batch_repeat_interleave(repeats)
    return cache


def sample_completions(model: PreTrainedModel, tokenizer, prompts: EncodedPrompts,
                       num_generations: int, max_new_tokens: int, temperature: float = 1.0,
                       do_sample: bool = True, min_new_tokens: int = 0) -> Samples:
    """Sample ``num_generations`` completions per prompt in one batched decode: the lean
    loop of ``decoding`` where it applies (the same tokens, fewer ops), else ``generate``.

    Pure temperature sampling, with no top-k or top-p truncation, so the sampled
    distribution is the policy's own: inverse CDF over softmax(logits / T)
    (``InverseCDFSampling``) with ``generate`` in greedy mode; ``do_sample=False`` is
    plain greedy decoding.
    ``min_new_tokens`` > 0 suppresses EOS before that many tokens (benchmarks use it to
    fix the work per step).
    """
    eos = eos_ids(tokenizer, model)
    device = next(model.parameters()).device
    # EOS suppression first: the sampler must see the -inf it writes.
    processors = LogitsProcessorList(
        ([SuppressEOS(eos, prompts.ids.shape[1], min_new_tokens)] if min_new_tokens else [])
        + ([InverseCDFSampling(temperature)] if do_sample else []))
    prompt_ids, prompt_mask = prompts.ids.to(device), prompts.mask.to(device)
    # Greedy mode returns one sequence per input row: repeat each prompt G times, as
    # num_return_sequences would (prompt-major order).
    rows_ids = prompt_ids.repeat_interleave(num_generations, 0)
    rows_mask = prompt_mask.repeat_interleave(num_generations, 0)
    lean_unsupported = decoding.unsupported(model)
    _announce(model, f"transformers' generate: {lean_unsupported}" if lean_unsupported is not None
              else "the fused CPU decode kernel (alignment/kernels)" if decoding.fused(model)
              else "the lean Llama decode loop (alignment/decoding.py)")
    # Inference mode, not only no_grad: no version counters or autograd checks on the
    # ~5,800 dispatcher calls of each decode step (-0.1 s per rollout, benchmarks/NOTES.md).
    with torch.inference_mode():
        cache = prompt_cache(model, prompt_ids, prompt_mask, num_generations)
        if lean_unsupported is None:
            new_ids = decoding.decode(model, rows_ids, rows_mask, cache, max_new_tokens, processors,
                                      eos, tokenizer.pad_token_id)
        else:
            config = GenerationConfig(
                do_sample=False, max_new_tokens=max_new_tokens, num_beams=1, eos_token_id=eos,
                pad_token_id=tokenizer.pad_token_id, use_cache=True)
            new_ids = model.generate(input_ids=rows_ids, attention_mask=rows_mask,
                                     past_key_values=cache, generation_config=config,
                                     logits_processor=processors)[:, prompt_ids.shape[1]:]
    # A clone outside inference mode is a normal tensor: the update embeds these ids
    # under autograd, which refuses inference tensors.
    ids = new_ids.cpu().clone()
    mask = completion_mask(ids, eos)
    ids = ids.masked_fill(mask == 0, tokenizer.pad_token_id)
    truncated = ~torch.isin(ids, torch.tensor(eos)).any(dim=1)
    texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
    return Samples(ids, mask, [t.strip() for t in texts], truncated)


def _forward(model: PreTrainedModel, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
             completion_ids: torch.Tensor, completion_mask_: torch.Tensor, return_hidden: bool):
    """The model on prompt + completion, logits for the C+1 last positions only
    (``logits_to_keep`` skips the LM head on prompt positions): position t predicts
    completion token t, the last position predicts nothing we score."""
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attention_mask = torch.cat([prompt_mask, completion_mask_], dim=1)
    return model(input_ids=input_ids, attention_mask=attention_mask,
                 position_ids=position_ids(attention_mask),
                 logits_to_keep=completion_ids.shape[1] + 1, use_cache=False,
                 output_hidden_states=return_hidden)


def completion_logits(model: PreTrainedModel, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                      completion_ids: torch.Tensor, completion_mask_: torch.Tensor) -> torch.Tensor:
    """Logits predicting each completion token: [N, C, V] in the model's dtype. Masked
    positions hold garbage; mask them."""
    return _forward(model, prompt_ids, prompt_mask, completion_ids, completion_mask_, False).logits[:, :-1]


def _float_chunks(flat: torch.Tensor, chunk: int):
    """(start, stop, rows) for each ``chunk`` rows of ``flat`` [N, V], ``rows`` being
    their float32 copy in one [chunk, V] buffer that every chunk reuses."""
    buffer = torch.empty(min(chunk, flat.shape[0]), flat.shape[1], dtype=torch.float32, device=flat.device)
    for start in range(0, flat.shape[0], chunk):
        stop = min(start + chunk, flat.shape[0])
        yield start, stop, buffer[: stop - start].copy_(flat[start:stop])


class _SelectiveLogSoftmax(torch.autograd.Function):
    """log_softmax(logits)[index] forward and backward, ``chunk`` positions at a time,
    through one float32 [chunk, V] buffer per pass (``_float_chunks``). Saves the logits
    and the [N·C] log-sum-exps, so backward's softmax is exp(z − lse) in place. A fresh
    vocabulary-wide temporary per chunk (the float copy, then the log-sum-exp's and
    softmax's own) was mostly page faults in a training step (benchmarks/NOTES.md); the
    peak is the logits, their gradient and one buffer."""

    @staticmethod
    def forward(ctx, logits, index, chunk):
        flat, ids = logits.reshape(-1, logits.shape[-1]), index.reshape(-1)
        lse = torch.empty(ids.shape, dtype=torch.float32, device=logits.device)
        for s, e, rows in _float_chunks(flat, chunk):
            top = rows.amax(-1, keepdim=True)
            lse[s:e] = rows.sub_(top).exp_().sum(-1).log_().add_(top.squeeze(-1))
        ctx.save_for_backward(logits, index, lse)
        ctx.chunk = chunk
        picked = flat.gather(-1, ids[:, None]).squeeze(-1).float()
        return (picked - lse).view(index.shape)

    @staticmethod
    def backward(ctx, grad_out):
        logits, index, lse = ctx.saved_tensors
        flat, ids, g = logits.reshape(-1, logits.shape[-1]), index.reshape(-1), grad_out.reshape(-1)
        grad = torch.empty_like(flat)
        for s, e, rows in _float_chunks(flat, ctx.chunk):
            # d/dz [z_i − logsumexp(z)] = onehot_i − softmax(z)
            rows.sub_(lse[s:e, None]).exp_().mul_(-g[s:e, None])
            rows.scatter_add_(-1, ids[s:e, None], g[s:e, None])
            grad[s:e] = rows
        return grad.view(logits.shape), None, None


def selective_log_softmax(logits: torch.Tensor, index: torch.Tensor, chunk: int = 128) -> torch.Tensor:
    """``log_softmax(logits)`` at ``index`` only, in float32, ``chunk`` token positions at
    a time: never a full-vocabulary log-softmax (or a float32 copy of bf16 logits) for
    the whole batch. At a 152k vocabulary, 16 × 1,024 tokens of one would be 10 GB
    (trl#3678). ``logits`` [N, C, V], ``index`` [N, C] -> [N, C]."""
    return _SelectiveLogSoftmax.apply(logits, index, chunk)


def token_logps(model: PreTrainedModel, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                completion_ids: torch.Tensor, completion_mask_: torch.Tensor,
                return_hidden: bool = False):
    """Per-token log π(c_t | prompt, c_<t) of completions, float32. All inputs [N, ·];
    returns [N, C] (and, with ``return_hidden``, the last hidden state of the position
    before each completion token, [N, C, H]). Masked positions hold garbage."""
    out = _forward(model, prompt_ids, prompt_mask, completion_ids, completion_mask_, return_hidden)
    # Score all C+1 positions (the last against a dummy id) and drop that column of the
    # small result: slicing the logits instead would allocate a full-size gradient.
    padded = F.pad(completion_ids, (0, 1))
    logps = selective_log_softmax(out.logits, padded)[:, :-1]
    if return_hidden:
        c = completion_ids.shape[1]
        return logps, out.hidden_states[-1][:, -(c + 1):-1]
    return logps


def shares_prompt(model: torch.nn.Module) -> bool:
    """Whether ``member_logps`` may run each prompt once for all its members. Not under
    activation checkpointing (its recompute would append to the KV cache a second time)
    nor for a mixture-of-experts policy (the router's loss and counts are taken per
    forward over the whole sequence)."""
    return not any(getattr(m, "gradient_checkpointing", False) or is_moe(m) for m in model.modules())


def shared_prompt_token_logps(model: PreTrainedModel, prompt_ids: torch.Tensor,
                              prompt_mask: torch.Tensor, completion_ids: torch.Tensor,
                              completion_mask_: torch.Tensor, return_hidden: bool = False):
    """``token_logps`` for M completions per prompt with each prompt run once.

    ``prompt_*``: [B, P]; ``completion_*``: [B·M, C], prompt-major. Every prompt token
    but the last runs once per prompt (``prompt_cache``, as for generation); each
    member then runs its prompt's last token and its completion but the last token on
    the repeated cache: C positions whose logits predict exactly the C completion
    tokens. Causal attention makes that the same computation as B·M prompt + completion
    rows, with B·(P − 1) + B·M·C token positions instead of B·M·(P + C) (the
    benchmark's GRPO update: 456 instead of 680), and the LM head runs once, on B·M·C
    positions. Gradients reach the prompt positions through the cache. Both forwards'
    tokens are embedded in one lookup, so the embedding's backward builds one
    vocabulary-sized gradient, not two. Returns [B·M, C] (and hidden states [B·M, C, H])."""
    n, c = completion_ids.shape
    b, p = prompt_ids.shape
    m = n // b
    member_ids = torch.cat([prompt_ids[:, -1:].repeat_interleave(m, 0), completion_ids[:, :-1]], dim=1)
    embedding = getattr(model, "module", model).get_input_embeddings()  # under DDP too
    embeds = embedding(torch.cat([prompt_ids[:, :-1].reshape(-1), member_ids.reshape(-1)]))
    prefix_embeds, member_embeds = embeds.split([b * (p - 1), n * c])
    cache = prompt_cache(model, prompt_ids, prompt_mask, m, prefix_embeds.view(b, p - 1, embeds.shape[-1]))
    attention_mask = torch.cat([prompt_mask.repeat_interleave(m, 0), completion_mask_[:, :-1]], dim=1)
    out = model(inputs_embeds=member_embeds.view(n, c, embeds.shape[-1]), attention_mask=attention_mask,
                position_ids=position_ids(attention_mask)[:, -c:], past_key_values=cache,
                use_cache=cache is not None, logits_to_keep=c, output_hidden_states=return_hidden)
    logps = selective_log_softmax(out.logits, completion_ids)
    if return_hidden:
        return logps, out.hidden_states[-1]
    return logps


def sequence_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Length-normalised sum over each row's unmasked tokens. [..., T] -> [...]."""
    mask = mask.to(values.dtype)
    return (values * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
