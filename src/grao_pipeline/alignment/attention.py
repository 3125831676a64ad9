"""Attention on CPU, registered with transformers' ``AttentionInterface`` as
``CPU_ATTENTION``; each key/value head's query heads are packed as rows of one matrix
(no ``repeat_kv`` copies of keys and values).

- One-token queries (decoding): SDPA on the packed query. transformers 5 packs it that
  way itself only with an attention mask; without one it asked SDPA for grouped-query
  attention, ~330 µs per call against ~65 µs (8 rows, 9 query and 3 key/value heads, 70
  positions; docs/perf-log.md).
- Small multi-token attention (the update's forwards at RL batch sizes, at most
  ``EXPLICIT_MAX_WEIGHTS`` attention weights per layer): softmax(q·kᵀ·scale) v written
  out, with the softmax in float32. SDPA's CPU flash kernel has fixed costs that
  dominate there: forward + backward on 8 rows × 48 queries × 84 keys took 7.1 ms where
  the explicit form takes 2.3 ms; above ~4M weights flash is faster, and it never
  holds the weights (docs/perf-log.md).
- Everything else (larger attention, dropout, attention sinks, soft-capping, position
  biases, float masks) is transformers' SDPA unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

CPU_ATTENTION = "grao_cpu"

# Attention weights per layer (batch × heads × queries × keys) up to which the explicit
# softmax runs instead of SDPA: faster below it on CPU (the crossover measured between
# 3M and 5M), and the weights it keeps for backward stay under 12 MB a layer.
EXPLICIT_MAX_WEIGHTS = 2**21


def cpu_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                  **kwargs):
    """transformers' attention signature. query [B, H, Q, D]; key, value [B, KV, L, D];
    attention_mask bool [B, 1, Q, L] or None. Returns ([B, Q, H, D], None)."""
    batch, heads, q_len, dim = query.shape
    kv_heads, kv_len = key.shape[1], key.shape[2]
    plain = not dropout and not any(
        kwargs.get(name) is not None for name in ("s_aux", "softcap", "position_bias"))
    if plain and q_len == 1:
        # Head h reads key/value head h // (heads / kv_heads), as repeat_kv lays them
        # out, so a group's heads become that key/value head's query rows.
        packed = query.reshape(batch, kv_heads, heads // kv_heads, dim)
        attn_output = F.scaled_dot_product_attention(packed, key, value, attn_mask=attention_mask,
                                                     scale=scaling)
        return attn_output.reshape(batch, 1, heads, dim), None
    causal = kwargs.get("is_causal")
    causal = getattr(module, "is_causal", True) if causal is None else causal
    # Without a mask transformers aligns a causal mask to the top left; written out here
    # only where that is also the bottom right (as many queries as keys).
    mask_known = (attention_mask is not None and attention_mask.dtype == torch.bool) or (
        attention_mask is None and (q_len == kv_len or not causal))
    if plain and mask_known and batch * heads * q_len * kv_len <= EXPLICIT_MAX_WEIGHTS:
        if attention_mask is None and causal:
            attention_mask = torch.ones(q_len, kv_len, dtype=torch.bool, device=query.device).tril()[None, None]
        return explicit_attention(query, key, value, attention_mask, scaling), None
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                  scaling=scaling, **kwargs)


def explicit_attention(query, key, value, attention_mask, scaling):
    """softmax(q·kᵀ·scale, masked) v, the softmax in float32, with each key/value head's
    query heads packed as rows. query [B, H, Q, D]; key, value [B, KV, L, D];
    attention_mask bool [B or 1, 1, Q, L], or None. Returns [B, Q, H, D].
    A fully masked row (a padding position's query) gets finite weights rather than
    NaN, so nothing non-finite reaches the gradients; what it attends to is masked from
    every real position anyway."""
    batch, heads, q_len, dim = query.shape
    kv_heads, kv_len = key.shape[1], key.shape[2]
    group = heads // kv_heads
    packed = query.reshape(batch, kv_heads, group * q_len, dim)
    scores = torch.matmul(packed, key.transpose(-1, -2)).float()
    scores = scores * (dim ** -0.5 if scaling is None else scaling)
    if attention_mask is not None:
        scores = scores.view(batch, kv_heads, group, q_len, kv_len).masked_fill(
            ~attention_mask[:, :, None], torch.finfo(torch.float32).min).view(scores.shape)
    weights = torch.softmax(scores, dim=-1).to(value.dtype)
    attn_output = torch.matmul(weights, value).view(batch, heads, q_len, value.shape[-1])
    return attn_output.transpose(1, 2).contiguous()


AttentionInterface.register(CPU_ATTENTION, cpu_attention)
AttentionMaskInterface.register(CPU_ATTENTION, sdpa_mask)


def applies(model, device: torch.device) -> bool:
    """On a CPU, for a model class that takes registered attention functions."""
    return device.type == "cpu" and getattr(model, "_supports_attention_backend", False)


@contextlib.contextmanager
def cpu_attention_in(model, device: torch.device) -> Iterator[None]:
    """``model`` attends with ``cpu_attention`` inside the block where it ``applies``
    (a policy that generates itself, where bf16 is not native); its own setting is back
    on exit, so a returned or saved model is as it came."""
    config = model.config
    before = config._attn_implementation
    if applies(model, device):
        config._attn_implementation = CPU_ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = before
