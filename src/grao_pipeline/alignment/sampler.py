"""The model generation runs on, and its re-sync after every update.

Where bf16 is native, generation runs on a bf16 copy of the policy (about 2× faster
than fp32: decoding streams the weights once per token). On a CPU, that copy's linear
layers hold their weights pre-packed in oneDNN's blocked layout (``PackedLinear``): a
decode step is ~210 small GEMMs with 8 rows, and the packed kernels stream the weights
at ~13 GB/s where ``aten::mm`` on the plain layout manages ~8 GB/s
(benchmarks/NOTES.md). Outputs are bit-identical to ``F.linear`` (tested).

On a CPU its attention is ``attention.cpu_attention``: SDPA with the one-token query
packed per key/value head, ~5× faster than the grouped-query kernel transformers asks
for when prompts need no padding.

A LoRA policy's copy has its adapters merged (W + s·BA), so generation pays nothing for
them. Where bf16 is not native, the sampler is the policy itself: no copy, no sync.

Memory: the copy is built empty from the config and filled by ``sync_sampler``;
packing goes through one reused bf16 buffer (a fresh bf16 cast per layer fragmented
the heap: 212 MB of weights took 311 MB packed that way). The packed weights live only
from a sync to the end of the next rollout (``release_sampler``), so the update reuses
their memory (benchmarks/NOTES.md).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from peft.tuners.lora import LoraLayer

from grao_pipeline.alignment.attention import CPU_ATTENTION, applies
from grao_pipeline.alignment.lora import has_adapters
from grao_pipeline.alignment.trainer import bf16_supported


def packing_available() -> bool:
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


class PackedLinear(torch.nn.Module):
    """A bf16 linear layer for inference whose weight lives in oneDNN's packed layout,
    packed for ``rows`` input rows (the decode batch; any row count gives the same
    result, only the kernel choice is tuned for it). ``pack`` fills it."""

    def __init__(self, in_features: int, out_features: int, bias: bool, rows: int):
        super().__init__()
        self.in_features, self.out_features, self.rows = in_features, out_features, rows
        self.bias = torch.nn.Parameter(torch.empty(out_features, dtype=torch.bfloat16),
                                       requires_grad=False) if bias else None
        self.packed: torch.Tensor | None = None

    @torch.no_grad()
    def pack(self, weight: torch.Tensor, scratch: torch.Tensor) -> None:
        """Pack ``weight`` [out, in] (any dtype) through ``scratch``, a flat bf16
        buffer at least as large."""
        plain = scratch[: weight.numel()].view(weight.shape)
        plain.copy_(weight)
        self.packed = torch.ops.mkldnn._reorder_linear_weight(plain, self.rows)

    def release(self) -> None:
        self.packed = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is None:
            raise RuntimeError("this sampling copy's weights were released after its rollout: "
                               "sync_sampler(sampler, policy) re-packs them")
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packed for {self.rows} rows"


def pack_linears(model: torch.nn.Module, rows: int) -> torch.nn.Module:
    """Swap every plain ``nn.Linear`` for an empty ``PackedLinear``, in place."""
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if type(child) is torch.nn.Linear:
                setattr(parent, child_name, PackedLinear(
                    child.in_features, child.out_features, child.bias is not None, rows))
    return model


def _plain_model(model):
    """The transformers model under a peft wrapper (the policy itself without one)."""
    return model.get_base_model() if has_adapters(model) else model


def sampling_copy(model, sampling_dtype: str, rows: int):
    """The policy's bf16 sampling copy (packed linears on CPU) where bf16 is wanted,
    else the policy itself. ``rows``: the decode batch (prompts per step × G)."""
    use_bf16 = sampling_dtype == "bfloat16" or (sampling_dtype == "auto" and bf16_supported())
    if not use_bf16:
        return model
    base = _plain_model(model)
    device = next(model.parameters()).device
    config = copy.deepcopy(base.config)
    if applies(base, device):
        config._attn_implementation = CPU_ATTENTION
    with torch.device("meta"):
        sampler = type(base)(config).to(torch.bfloat16)
    if device.type == "cpu" and packing_available():
        pack_linears(sampler, rows)
    sampler = sampler.to_empty(device=device).eval().requires_grad_(False)
    sampler.generation_config = copy.deepcopy(base.generation_config)
    sync_sampler(sampler, model)
    return sampler


def _policy_tensors(model) -> dict[str, Callable[[], torch.Tensor]]:
    """The policy's parameters and buffers under plain-model names, each behind a
    call, so a LoRA layer's merged weight W + s·BA exists one layer at a time. Tied
    tensors appear under each name."""
    base = _plain_model(model)
    tensors = {name: (lambda t=tensor: t) for name, tensor in [
        *base.named_parameters(remove_duplicate=False), *base.named_buffers(remove_duplicate=False)]
        if ".lora_" not in name and ".base_layer." not in name}
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer):
            tensors[f"{name}.weight"] = lambda m=module: m.base_layer.weight + sum(
                m.get_delta_weight(adapter) for adapter in m.active_adapters)
            if module.base_layer.bias is not None:
                tensors[f"{name}.bias"] = lambda m=module: m.base_layer.bias
    return tensors


def release_sampler(sampler) -> None:
    """Drop the copy's packed weights (stale once the update starts) until the next
    ``sync_sampler``, so the update reuses their memory: the copy and the update's
    activations no longer peak together. A no-op where there is no packed copy."""
    for module in sampler.modules():
        if isinstance(module, PackedLinear):
            module.release()


@torch.no_grad()
def sync_sampler(sampler, model) -> None:
    """Copy the policy's weights into its sampling copy (cast to bf16, packed where the
    copy's layer is packed). Every tensor of the copy is refreshed, or this raises."""
    if sampler is model:
        return
    policy = _policy_tensors(model)

    def source(name: str) -> torch.Tensor:
        if name not in policy:
            raise KeyError(f"sampling copy has {name!r}, which the policy lacks: cannot re-sync")
        return policy[name]()

    packed = {name: m for name, m in sampler.named_modules() if isinstance(m, PackedLinear)}
    if packed:
        scratch = torch.empty(max(m.in_features * m.out_features for m in packed.values()),
                              dtype=torch.bfloat16)
        for name, layer in packed.items():
            layer.pack(source(f"{name}.weight"), scratch)
    for name, tensor in [*sampler.named_parameters(), *sampler.named_buffers()]:
        tensor.copy_(source(name))
