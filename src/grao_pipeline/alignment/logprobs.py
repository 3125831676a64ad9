"""Per-token log-probabilities of completions under a policy, the prompt's KV cache
shared by a group's members, and the length-normalised mean over a completion.

``selective_log_softmax`` never materialises a full-vocabulary float32 log-softmax for
the whole batch: it works ``chunk`` token positions at a time through one buffer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from grao_pipeline.alignment.moe import is_moe
from grao_pipeline.alignment.tokens import position_ids


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
    softmax's own) was mostly page faults in a training step (docs/perf-log.md); the
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
