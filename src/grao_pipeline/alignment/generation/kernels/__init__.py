"""The fused CPU decode kernel (``decode_cpu.cpp``), loaded as ``torch.ops.grao_cpu``.

Why a kernel of our own: a decode step streams every weight once for only 8 rows, and
neither oneDNN's bf16 GEMM (~35% of the bf16 peak for 8 rows on an AVX512-BF16 CPU
without AMX) nor eager PyTorch's ~1,200 small ops per step come near the machine's
floor (docs/performance.md). It needs AVX512-BF16 (AMD Zen 4, Intel Cooper Lake and
later) and a C++ compiler.

Two calls, kept apart: ``unsupported()`` answers whether it could run here from the CPU
flags and the compiler's presence, and compiles nothing; ``load()`` is the first real
use: it builds the extension with torch's own builder (``torch.utils.cpp_extension``,
~15 s the first time, then cached per machine under ``TORCH_EXTENSIONS_DIR`` in a folder
named by the source's content) and raises ``KernelBuildError`` naming the failure.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
from pathlib import Path

import torch

from grao_pipeline.alignment.hardware import cpu_flags

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("decode_cpu.cpp")
# Output columns per weight tile (3 blocks of 16: the kernel's register tile), and so
# the granularity of the packed layout.
TILE_COLS = 48
# ``PackedLinear.layout`` of a weight packed for this kernel.
VNNI_LAYOUT = "vnni"
CFLAGS = ["-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512bf16", "-mfma",
          "-fopenmp"]


class KernelBuildError(RuntimeError):
    """The kernel's source did not compile or load; the message holds the compiler's error."""


def unsupported() -> str | None:
    """Why the fused kernel cannot run on this machine, from its CPU flags and the
    compiler's presence; None where it can. Compiles nothing."""
    missing = {"avx512f", "avx512bw", "avx512vl", "avx512_bf16"} - cpu_flags()
    if missing:
        return f"the CPU lacks {', '.join(sorted(missing))}"
    if shutil.which("c++") is None:
        return "no C++ compiler (c++) on PATH to build generation/kernels/decode_cpu.cpp"
    return None


@functools.cache
def load() -> None:
    """Build (first time on this machine) and load the kernel into ``torch.ops.grao_cpu``."""
    reason = unsupported()
    if reason is not None:
        raise KernelBuildError(f"the fused CPU decode kernel cannot run here: {reason}")
    from torch.utils.cpp_extension import load as load_extension

    logger.info("building/loading the fused CPU decode kernel (generation/kernels/decode_cpu.cpp)")
    name, source = _build_source()
    try:
        load_extension(name=name, sources=[str(source)], extra_cflags=CFLAGS,
                       build_directory=str(source.parent), is_python_module=False, verbose=False)
    except Exception as error:
        raise KernelBuildError(f"building generation/kernels/decode_cpu.cpp failed: {error}") from error


def _build_source() -> tuple[str, Path]:
    """The extension's name and its source's copy in a build folder named by the source,
    the flags and torch's version. Why a copy: torch's builder rebuilds (~12 s) whenever
    the source's path changes, and every copied Kedro project (tests, DVC's workspaces)
    imports the package from its own path; keyed by content, they share one build."""
    from torch.utils.cpp_extension import get_default_build_root

    code = SOURCE.read_bytes()
    digest = hashlib.sha256(b"\0".join([code, " ".join(CFLAGS).encode(), torch.__version__.encode()]))
    name = f"grao_cpu_kernels_{digest.hexdigest()[:16]}"
    folder = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()) / name
    folder.mkdir(parents=True, exist_ok=True)
    source = folder / SOURCE.name
    if not source.is_file() or source.read_bytes() != code:
        # Written whole, then renamed: a concurrent process never compiles half a file.
        partial = folder / f".{SOURCE.name}.{os.getpid()}"
        partial.write_bytes(code)
        os.replace(partial, source)
    return name, source


def pack_vnni(weights: list[torch.Tensor]) -> torch.Tensor:
    """``weights`` (float32 or bf16 [n_i, K], K even), their rows stacked into one [N, K]
    matrix, in the kernel's layout: [ceil(N / 48), K / 2, 48, 2] bf16, each 48-column tile
    one contiguous stream holding, for each pair of input columns, its 48 columns' two
    weights side by side (``vdpbf16ps``'s operand order). Columns past N are zero; the
    cast to bf16 is torch's (round to nearest even)."""
    k = weights[0].shape[1]
    if k % 2 or any(w.dim() != 2 or w.shape[1] != k for w in weights):
        raise ValueError(f"pack_vnni: weights must be [n, K] with one even K, got "
                         f"{[tuple(w.shape) for w in weights]}")
    load()
    n = sum(w.shape[0] for w in weights)
    packed = torch.empty(-(-n // TILE_COLS), k // 2, TILE_COLS, 2, dtype=torch.bfloat16)
    torch.ops.grao_cpu.pack_vnni_(packed, [w.contiguous() for w in weights])
    return packed


def vnni_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None,
                out_features: int) -> torch.Tensor:
    """x [..., K] bf16 times the packed weight, plus ``bias`` (float32): float32 [..., N]."""
    load()
    empty = torch.empty(0)
    return torch.ops.grao_cpu.vnni_linear(x, packed, empty if bias is None else bias, out_features)
