"""A lean decode loop for Llama-architecture models on CPU: ``generate``'s greedy loop
(with our logits processors) written out over the model's own modules, computing
bit-identical tokens (tested against ``generate``) with fewer, cheaper ops per step.

Why: a decode step on CPU is ~210 small GEMMs plus, through transformers' modules,
~5,800 dispatcher calls of views, casts and concatenations, and those cost as much as
the GEMMs (docs/performance.md). Here a step is the same arithmetic in
~40 ops per layer:

- the prompt's KV cache (``prompt_cache``) is copied once into a buffer with room for
  every completion token, and each step writes one column (no ``cat`` per step);
- the rotary embedding is computed once per step and applied to queries and keys in
  one expression; ``roll`` by half the head dimension with a signed sine equals
  ``rotate_half``, bit for bit;
- attention is SDPA on the query heads packed per key/value head, as
  ``attention.cpu_attention`` calls it;
- grouped linears (``packing.PackedLinear`` groups q/k/v and gate/up) run as one GEMM
  where the model has them, else as its separate linears concatenated.

Where the sampling copy's linears are packed for the fused CPU kernel
(``packing.sampling_copy``, ``decode_kernel``), the same loop runs each step as one call
to ``kernels/decode_cpu.cpp`` instead (``_fused_step``): the same layer, its GEMMs on
vnni-packed bf16 weights and the residual stream in float32, so its logits track the
float32 policy at least as closely as the eager bf16 step's (tested), though not bit
for bit as ``generate``'s. Only the draw, the EOS bookkeeping and the embedding lookup
stay in Python.

Simplifications, each checked by ``unsupported``: the Llama layer only (RMSNorm, rotary
attention, SiLU-gated MLP; no biases in the MLP, no attention dropout, no sliding
window, no per-head norms), no peft wrapper, and only where the model already attends
with ``CPU_ATTENTION`` (training runs on a CPU), so both loops run the same attention.
Elsewhere ``generate`` runs. ``choose_loop`` makes that choice once, when a ``Sampler``
is built, and the sampler logs it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import LogitsProcessorList

from grao_pipeline.alignment.attention import CPU_ATTENTION
from grao_pipeline.alignment.generation import kernels
from grao_pipeline.alignment.lora import has_adapters

# Model types whose decoder layer is exactly the one written out below.
LLAMA_LAYER_TYPES = ("llama",)


def unsupported(model) -> str | None:
    """Why the lean loop cannot decode ``model`` exactly as ``generate`` would; None
    where it can."""
    config = model.config
    checks = [
        (config.model_type in LLAMA_LAYER_TYPES,
         f"model type {config.model_type!r} is not one of {LLAMA_LAYER_TYPES}"),
        (not has_adapters(model), "a peft-wrapped model"),
        (getattr(config, "_attn_implementation", None) == CPU_ATTENTION,
         f"attention is {getattr(config, '_attn_implementation', None)!r}, not {CPU_ATTENTION!r}"),
        (config.hidden_act == "silu", f"activation {config.hidden_act!r}"),
        (not getattr(config, "mlp_bias", False), "MLP biases"),
        (not getattr(config, "attention_dropout", 0.0) or not model.training, "attention dropout"),
    ]
    reasons = [reason for ok, reason in checks if not ok]
    return "; ".join(reasons) or None


def fused_unsupported(model) -> str | None:
    """Why the fused kernel's step cannot run ``model`` (beyond ``unsupported``): its
    vector loops take head dimensions, hidden and intermediate sizes in multiples of 16."""
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    checks = [(head_dim % 16 == 0, f"head dimension {head_dim} is not a multiple of 16"),
              (config.hidden_size % 16 == 0 and config.intermediate_size % 16 == 0,
               f"hidden size {config.hidden_size} or intermediate size {config.intermediate_size} "
               "is not a multiple of 16")]
    reasons = [reason for ok, reason in checks if not ok]
    return "; ".join(reasons) or None


# The decode loops a Sampler can run (``choose_loop``).
GENERATE, LEAN, FUSED = "generate", "lean", "fused"


def choose_loop(model) -> tuple[str, str]:
    """The decode loop for ``model`` (``GENERATE``, ``LEAN`` or ``FUSED``) and a sentence
    saying why, for the log."""
    reason = unsupported(model)
    if reason is not None:
        return GENERATE, f"transformers' generate ({reason})"
    if fused(model):
        return FUSED, "the fused CPU decode kernel (generation/kernels)"
    return LEAN, "the lean Llama decode loop (generation/decoding.py)"


def _rms_norm(hidden: torch.Tensor, norm: torch.nn.Module) -> torch.Tensor:
    """``LlamaRMSNorm``: normalised in float32, cast back, then scaled."""
    x = hidden.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    return norm.weight * x.to(hidden.dtype)


def _joint(parent: torch.nn.Module, names: tuple[str, ...]):
    """One call computing ``parent``'s linears ``names`` on one input, outputs side by
    side: the packed group where the sampling copy has one."""
    packed = getattr(parent, f"packed_{'_'.join(names)}", None)
    if packed is not None:
        return packed
    linears = [getattr(parent, name) for name in names]
    return lambda x: torch.cat([linear(x) for linear in linears], dim=-1)


def fused(model) -> bool:
    """Whether ``model`` is a sampling copy packed for the fused CPU decode kernel
    (``packing.sampling_copy`` packs it so only where ``unsupported`` is None)."""
    return getattr(model.lm_head, "layout", None) == kernels.VNNI_LAYOUT


def _lean_step(model, keys, values, key_mask, sequences):
    """One decode step in eager PyTorch over the model's modules: the logits [N, V] of
    the tokens at ``column``, their keys and values written into the cache there."""
    body, config = model.model, model.config
    layers = [(layer.input_layernorm, _joint(layer.self_attn, ("q_proj", "k_proj", "v_proj")),
               layer.self_attn.o_proj, layer.post_attention_layernorm,
               _joint(layer.mlp, ("gate_proj", "up_proj")), layer.mlp.down_proj)
              for layer in body.layers]
    attn = body.layers[0].self_attn
    heads, kv_heads, dim = config.num_attention_heads, config.num_key_value_heads, attn.head_dim
    qk_width, inner = (heads + kv_heads) * dim, config.intermediate_size
    n = sequences.shape[0]

    def step(column: int, positions: torch.Tensor) -> torch.Tensor:
        hidden = body.embed_tokens(sequences[:, column:column + 1])  # [N, 1, H]
        cos, sin = body.rotary_emb(hidden, positions)  # [N, 1, D]
        signed_sin = torch.cat([-sin[..., :dim // 2], sin[..., dim // 2:]], dim=-1)
        mask = None if key_mask is None else key_mask[:, None, None, :column + 1]
        for i, (input_norm, qkv_proj, o_proj, post_norm, gate_up_proj, down_proj) in enumerate(layers):
            qkv = qkv_proj(_rms_norm(hidden, input_norm))[:, 0]  # [N, (heads + 2·kv_heads)·D]
            qk = qkv[:, :qk_width].view(n, heads + kv_heads, dim)
            qk = qk * cos + qk.roll(dim // 2, dims=-1) * signed_sin
            keys[i, :, :, column] = qk[:, heads:]
            values[i, :, :, column] = qkv[:, qk_width:].view(n, kv_heads, dim)
            # Query head h reads key/value head h // (heads / kv_heads): packed as its rows.
            query = qk[:, :heads].view(n, kv_heads, heads // kv_heads, dim)
            attn_output = F.scaled_dot_product_attention(
                query, keys[i, :, :, :column + 1], values[i, :, :, :column + 1], attn_mask=mask,
                scale=attn.scaling)
            hidden = hidden + o_proj(attn_output.reshape(n, 1, heads * dim))
            gate_up = gate_up_proj(_rms_norm(hidden, post_norm))
            hidden = hidden + down_proj(F.silu(gate_up[..., :inner]) * gate_up[..., inner:])
        return model.lm_head(_rms_norm(hidden, body.norm))[:, -1].float()

    return step


def _fused_step(model, keys, values, key_mask, sequences):
    """The same step as one call to the fused kernel (``kernels/decode_cpu.cpp``), over
    the copy's vnni-packed linears; float32 logits [N, V]."""
    body, config = model.model, model.config
    attn = body.layers[0].self_attn
    linears = [linear for layer in body.layers for linear in (
        layer.self_attn.packed_q_proj_k_proj_v_proj, layer.self_attn.o_proj,
        layer.mlp.packed_gate_proj_up_proj, layer.mlp.down_proj)] + [model.lm_head]
    weights = [linear.packed for linear in linears]
    empty = torch.empty(0)
    biases = [empty if linear.bias is None else linear.bias for linear in linears]
    norms = [norm.weight.float() for layer in body.layers
             for norm in (layer.input_layernorm, layer.post_attention_layernorm)] + [body.norm.weight.float()]
    eps = body.norm.variance_epsilon
    mask = empty if key_mask is None else key_mask.contiguous()
    probe = torch.empty(0, dtype=torch.float32)  # rotary_emb returns cos/sin in its input's dtype

    def step(column: int, positions: torch.Tensor) -> torch.Tensor:
        embeds = body.embed_tokens(sequences[:, column])  # [N, H]
        cos, sin = body.rotary_emb(probe, positions)  # float32 [N, 1, D]
        return torch.ops.grao_cpu.llama_decode_step(
            embeds, cos[:, 0].contiguous(), sin[:, 0].contiguous(), keys, values, mask, column,
            weights, biases, norms, config.num_attention_heads, config.num_key_value_heads,
            config.intermediate_size, config.vocab_size, eps, attn.scaling)

    return step


@torch.inference_mode()
def decode(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, cache,
           max_new_tokens: int, processors: LogitsProcessorList, eos: list[int],
           pad_token_id: int, fused_step: bool = False) -> torch.Tensor:
    """The tokens ``generate`` (greedy mode, ``processors``) appends to left-padded
    ``prompt_ids`` / ``prompt_mask`` [N, P], given ``cache``: the KV cache of every prompt
    token but the last (``prompt_cache``; None for one-token prompts). A row stops at
    its first EOS and is padded with ``pad_token_id`` after it; the loop stops when
    every row has or after ``max_new_tokens``. Returns [N, T], T ≤ ``max_new_tokens``.
    A step runs in eager PyTorch, or as one fused kernel call with ``fused_step`` (the
    model's linears must then be packed for the kernel: ``fused(model)``)."""
    body, config = model.model, model.config
    n, p = prompt_ids.shape
    dim = body.layers[0].self_attn.head_dim
    dtype = body.embed_tokens.weight.dtype
    # Keys and values of every position: the prompt's from its cache, one column per step.
    keys = torch.empty(len(body.layers), n, config.num_key_value_heads, p + max_new_tokens, dim,
                       dtype=dtype, device=prompt_ids.device)
    values = torch.empty_like(keys)
    if cache is not None:
        for i, layer_cache in enumerate(cache.layers):
            keys[i, :, :, :p - 1] = layer_cache.keys
            values[i, :, :, :p - 1] = layer_cache.values
    # No mask where no row is padded (as transformers passes none then); completion
    # positions are never masked.
    padded = not bool(prompt_mask.all())
    key_mask = torch.cat([prompt_mask.bool(), prompt_mask.new_ones(n, max_new_tokens, dtype=torch.bool)],
                         dim=1) if padded else None
    positions = (prompt_mask.cumsum(dim=1) - 1).clamp(min=0)[:, -1:]
    sequences = torch.cat([prompt_ids, prompt_ids.new_full((n, max_new_tokens), pad_token_id)], dim=1)
    step_logits = (_fused_step if fused_step else _lean_step)(model, keys, values, key_mask, sequences)
    eos_ids = torch.tensor(eos, device=prompt_ids.device)
    unfinished = torch.ones(n, dtype=torch.bool, device=prompt_ids.device)
    generated = 0
    for step in range(max_new_tokens):
        column = p - 1 + step  # the position of this step's input token
        logits = step_logits(column, positions)
        scores = processors(sequences[:, :column + 1], logits)
        next_tokens = torch.where(unfinished, scores.argmax(dim=-1), pad_token_id)
        sequences[:, column + 1] = next_tokens
        unfinished &= ~torch.isin(next_tokens, eos_ids)
        positions = positions + 1
        generated += 1
        if not unfinished.any():
            break
    return sequences[:, p:p + generated]
