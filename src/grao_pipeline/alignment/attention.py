"""Attention for decoding on CPU, registered with transformers' ``AttentionInterface`` as
``CPU_ATTENTION``: SDPA with the one-token query packed per key/value head.

transformers packs a one-token query that way only when an attention mask is present;
without one (prompts of equal length, so no padding) it asks SDPA for grouped-query
attention instead, and that CPU kernel takes ~330 µs per call where the packed query
takes ~65 µs (8 rows, 9 query and 3 key/value heads, 70 positions; benchmarks/NOTES.md).
Everything else (prefill, training, dropout, attention sinks) is transformers' SDPA
unchanged, so outputs and gradients are SDPA's.
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


def cpu_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                  **kwargs):
    """transformers' attention signature. query [B, H, Q, D]; key, value [B, KV, L, D];
    attention_mask bool [B, 1, Q, L] or None. Returns ([B, Q, H, D], None)."""
    if query.shape[2] != 1 or dropout or any(
            kwargs.get(name) is not None for name in ("s_aux", "softcap", "position_bias")):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    batch, heads, _, dim = query.shape
    # Head h reads key/value head h // (heads / kv_heads), as repeat_kv lays them out,
    # so a group's heads become that key/value head's query rows.
    packed = query.reshape(batch, key.shape[1], heads // key.shape[1], dim)
    attn_output = F.scaled_dot_product_attention(packed, key, value, attn_mask=attention_mask,
                                                 scale=scaling)
    return attn_output.reshape(batch, 1, heads, dim), None


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
