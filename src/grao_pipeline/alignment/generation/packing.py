"""The sampling copy: the model generation runs on, and its re-sync after every update.

Where bf16 is native, generation runs on a bf16 copy of the policy (about 2× faster
than fp32: decoding streams the weights once per token). On a CPU, that copy's linear
layers hold their weights pre-packed (``PackedLinear``), in one of two layouts:

- oneDNN's blocked layout: a decode step is ~210 small GEMMs with 8 rows, and the
  packed kernels stream the weights at ~13 GB/s where ``aten::mm`` on the plain layout
  manages ~8 GB/s. Outputs are bit-identical to ``F.linear`` (tested).
- the fused decode kernel's (``kernels.VNNI_LAYOUT``), where the CPU has AVX512-BF16 and
  the model is a Llama that ``decoding`` decodes: its 8-row GEMMs stream the weights
  ~1.5× faster than oneDNN's and a whole decode step is one call. They accumulate in
  another order, so tokens are close to, not bit-identical with, ``generate``'s.

``decode_kernel`` picks: ``auto`` uses the kernel where it runs and logs why not
elsewhere, ``fused`` requires it, ``off`` keeps oneDNN's layout. Linears that read one
input (q/k/v, gate/up) run as one wider packed GEMM. On a CPU the copy attends with
``attention.cpu_attention``.

A LoRA policy's copy has its adapters merged (W + s·BA), so generation pays nothing for
them. Where bf16 is not native, the copy is the policy itself: no copy, no sync.

Memory: the copy is built empty from the config and filled by ``sync_copy``; packing
goes through one reused bf16 buffer (a fresh bf16 cast per layer fragmented the heap:
212 MB of weights took 311 MB packed that way). The packed weights live only from a
sync to the end of the next rollout (``release_copy``), so the update reuses their
memory (docs/performance.md).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable

import torch
from peft.tuners.lora import LoraLayer

from grao_pipeline.alignment.attention import CPU_ATTENTION, applies
from grao_pipeline.alignment.generation import decoding, kernels
from grao_pipeline.alignment.hardware import bf16_supported
from grao_pipeline.alignment.lora import has_adapters

logger = logging.getLogger(__name__)

ONEDNN_LAYOUT = "onednn"


def packing_available() -> bool:
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


# Sibling linears that transformers' decoder layers call on one input tensor: q/k/v on
# the attention's input, gate/up on the MLP's. Each group runs as one packed GEMM.
SHARED_INPUT_GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


class PackedLinear(torch.nn.Module):
    """A bf16 linear layer for inference whose weight lives in a packed ``layout``:
    oneDNN's (``ONEDNN_LAYOUT``), packed for ``rows`` input rows (the decode batch; any
    row count gives the same result, only the kernel choice is tuned for it), or the
    fused decode kernel's (``kernels.VNNI_LAYOUT``, float32 bias). ``members``: the
    names, under the same parent, of the policy's linears whose weights it stacks (one,
    or a group of ``SHARED_INPUT_GROUPS``). ``pack`` fills it."""

    def __init__(self, in_features: int, out_features: int, bias: bool, rows: int,
                 members: tuple[str, ...], layout: str = ONEDNN_LAYOUT):
        super().__init__()
        self.in_features, self.out_features, self.rows = in_features, out_features, rows
        self.has_bias, self.members, self.layout = bias, members, layout
        self.bias: torch.Tensor | None = None
        self.packed: torch.Tensor | None = None
        self._last: tuple | None = None

    @torch.no_grad()
    def pack(self, weights: list[torch.Tensor], biases: list[torch.Tensor],
             scratch: torch.Tensor | None) -> None:
        """Pack the members' ``weights`` [out_i, in], stacked by rows: oneDNN's layout
        through ``scratch``, a flat bf16 buffer at least as large (any dtype); the
        kernel's straight from them (float32 or bf16; ``scratch`` unused, may be None).
        ``biases`` likewise (or [])."""
        if self.layout == kernels.VNNI_LAYOUT:  # straight from the policy's weights, no scratch
            self.packed = kernels.pack_vnni(weights)
            self.bias = torch.cat(biases).float() if self.has_bias else None
            return
        plain = scratch[: self.out_features * self.in_features].view(self.out_features, self.in_features)
        row = 0
        for weight in weights:
            plain[row:row + weight.shape[0]].copy_(weight)
            row += weight.shape[0]
        self.packed = torch.ops.mkldnn._reorder_linear_weight(plain, self.rows)
        self.bias = torch.cat(biases).to(torch.bfloat16) if self.has_bias else None

    def release(self) -> None:
        self.packed, self._last = None, None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is None:
            raise RuntimeError("this sampling copy's weights were released after its rollout: "
                               "Sampler.sync(policy) re-packs them")
        if self.layout == kernels.VNNI_LAYOUT:
            return kernels.vnni_linear(x, self.packed, self.bias, self.out_features).to(x.dtype)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def shared_forward(self, x: torch.Tensor) -> torch.Tensor:
        """``forward(x)``, computed once for consecutive calls on the same, unmodified
        tensor (identity and version counter). Inference tensors (generation runs in
        inference mode) keep no version counter and are matched by identity alone:
        transformers' layers never modify the input between the group's calls."""
        version = None if x.is_inference() else x._version
        if self._last is None or self._last[0] is not x or self._last[1] != version:
            self._last = (x, version, self.forward(x))
        return self._last[2]

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"members={'+'.join(self.members)}, {self.layout} layout for {self.rows} rows")


class SharedInputSlice(torch.nn.Module):
    """One linear of a ``SHARED_INPUT_GROUPS`` group: columns [start, stop) of the group's
    packed GEMM, which the group's first call on an input computes for all of them."""

    def __init__(self, group: PackedLinear, start: int, stop: int):
        super().__init__()
        self._group = (group,)  # a tuple, so the group is not registered under every member
        self.start, self.stop = start, stop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._group[0].shared_forward(x)[..., self.start:self.stop]

    def extra_repr(self) -> str:
        return f"columns {self.start}:{self.stop} of {'+'.join(self._group[0].members)}"


def pack_linears(model: torch.nn.Module, rows: int, layout: str = ONEDNN_LAYOUT) -> torch.nn.Module:
    """Swap every plain ``nn.Linear`` for an empty ``PackedLinear``, in place; a
    ``SHARED_INPUT_GROUPS`` group of siblings with one input width and bias setting
    becomes one ``PackedLinear`` (registered on the parent as ``packed_<names>``) served
    through ``SharedInputSlice``s. Fewer, wider GEMMs per decode step (4 instead of 7 per
    layer; docs/perf-log.md). A model that calls a group's members on different
    inputs stays correct and computes the whole group for each call."""
    for parent in list(model.modules()):
        children = dict(parent.named_children())
        for group in SHARED_INPUT_GROUPS:
            linears = [children.get(name) for name in group]
            if not all(type(linear) is torch.nn.Linear for linear in linears) or \
                    len({(linear.in_features, linear.bias is None) for linear in linears}) != 1:
                continue
            packed = PackedLinear(linears[0].in_features, sum(linear.out_features for linear in linears),
                                  linears[0].bias is not None, rows, group, layout)
            parent.add_module(f"packed_{'_'.join(group)}", packed)
            start = 0
            for name, linear in zip(group, linears, strict=True):
                setattr(parent, name, SharedInputSlice(packed, start, start + linear.out_features))
                start += linear.out_features
        for child_name, child in list(parent.named_children()):
            if type(child) is torch.nn.Linear:
                setattr(parent, child_name, PackedLinear(
                    child.in_features, child.out_features, child.bias is not None, rows, (child_name,),
                    layout))
    return model


def _plain_model(model):
    """The transformers model under a peft wrapper (the policy itself without one)."""
    return model.get_base_model() if has_adapters(model) else model


def _layout(copy_model, decode_kernel: str) -> str:
    """The packed layout for ``copy_model`` (a bf16 copy on CPU) under ``decode_kernel``:
    the kernel's where ``decode_kernel`` allows it and it runs (building it on this first
    use), else oneDNN's, with the reason logged once; ``fused`` raises instead."""
    if decode_kernel == "off":
        return ONEDNN_LAYOUT
    reason = (decoding.unsupported(copy_model) or decoding.fused_unsupported(copy_model)
              or kernels.unsupported())
    if reason is None:
        try:
            kernels.load()
            return kernels.VNNI_LAYOUT
        except kernels.KernelBuildError as error:
            reason = str(error)
    if decode_kernel == "fused":
        raise RuntimeError(f"decode_kernel = 'fused', but the fused CPU decode kernel cannot run: {reason}")
    key = (type(copy_model).__name__, reason)
    if key not in _announced:
        _announced.add(key)
        logger.info("fused CPU decode kernel not used for %s (%s): oneDNN-packed linears", *key)
    return ONEDNN_LAYOUT


_announced: set[tuple[str, str]] = set()


def sampling_copy(model, sampling_dtype: str, rows: int, decode_kernel: str = "auto"):
    """The policy's bf16 sampling copy (packed linears on CPU) where bf16 is wanted,
    else the policy itself. ``rows``: the decode batch (prompts per step × G).
    ``decode_kernel``: ``auto``, ``fused`` or ``off`` (module docstring)."""
    use_bf16 = sampling_dtype == "bfloat16" or (sampling_dtype == "auto" and bf16_supported())
    if not use_bf16:
        return model
    base = _plain_model(model)
    device = next(model.parameters()).device
    config = copy.deepcopy(base.config)
    if applies(base, device):
        config._attn_implementation = CPU_ATTENTION
    with torch.device("meta"):
        copy_model = type(base)(config).to(torch.bfloat16)
    if device.type == "cpu" and packing_available():
        pack_linears(copy_model, rows, _layout(copy_model, decode_kernel))
    copy_model = copy_model.to_empty(device=device).eval().requires_grad_(False)
    copy_model.generation_config = copy.deepcopy(base.generation_config)
    sync_copy(copy_model, model)
    return copy_model


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


def release_copy(copy_model) -> None:
    """Drop the copy's packed weights (stale once the update starts) until the next
    ``sync_copy``, so the update reuses their memory: the copy and the update's
    activations no longer peak together. A no-op where there is no packed copy."""
    for module in copy_model.modules():
        if isinstance(module, PackedLinear):
            module.release()


@torch.no_grad()
def sync_copy(copy_model, model) -> None:
    """Copy the policy's weights into its sampling copy (cast to bf16, packed where the
    copy's layer is packed). Every tensor of the copy is refreshed, or this raises."""
    if copy_model is model:
        return
    policy = _policy_tensors(model)

    def source(name: str) -> torch.Tensor:
        if name not in policy:
            raise KeyError(f"sampling copy has {name!r}, which the policy lacks: cannot re-sync")
        return policy[name]()

    packed = {name: m for name, m in copy_model.named_modules() if isinstance(m, PackedLinear)}
    onednn = [m for m in packed.values() if m.layout == ONEDNN_LAYOUT]
    scratch = torch.empty(max(m.in_features * m.out_features for m in onednn), dtype=torch.bfloat16) \
        if onednn else None
    if packed:
        for name, layer in packed.items():
            parent = name.rpartition(".")[0]
            members = [f"{parent}.{member}" if parent else member for member in layer.members]
            layer.pack([source(f"{m}.weight") for m in members],
                       [source(f"{m}.bias") for m in members] if layer.has_bias else [], scratch)
    for name, tensor in [*copy_model.named_parameters(), *copy_model.named_buffers()]:
        tensor.copy_(source(name))
