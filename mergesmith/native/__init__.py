"""Fused CPU kernels (C + OpenMP, built at install time when a compiler is there).

Each function here has a pure-torch twin in mergesmith/methods that defines the numbers; the
kernels must agree bit for bit (tests/methods/test_native.py). ``available(*tensors)`` says
whether the kernels can take these tensors: contiguous, on the CPU, float32/bfloat16/float16.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

try:
    from mergesmith.native import _kernels
except ImportError:  # built without the extension: callers use the torch path
    _kernels = None

DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
BINS = 1 << 16
_KEY_BITS = {torch.float32: 32, torch.bfloat16: 16, torch.float16: 16}


def available(*tensors: torch.Tensor) -> bool:
    if _kernels is None or not tensors:
        return False
    dtype = tensors[0].dtype
    return dtype in DTYPE_CODES and all(
        t.dtype == dtype and t.device.type == "cpu" and t.is_contiguous() for t in tensors
    )


def _blocks(n: int) -> int:
    # A few blocks per core: enough to share the work, few enough that the per-block histograms
    # (512 KiB each) stay cheap to clear and sum.
    return max(1, min(8, n // 65536))


def _histogram(x, base, shift, prefix_shift, prefix) -> torch.Tensor:
    n, blocks = x.numel(), _blocks(x.numel())
    hist = torch.zeros((blocks, BINS), dtype=torch.int64)
    base_ptr = base.data_ptr() if base is not None else 0
    _kernels.hist_delta(DTYPE_CODES[x.dtype], base_ptr, x.data_ptr(), n, blocks, shift, prefix_shift, prefix, hist.data_ptr())
    return hist


def magnitude_threshold(x: torch.Tensor, base: Optional[torch.Tensor], k: int) -> tuple[int, int]:
    """For ``v = x - base`` (or x): the magnitude key of the k-th largest |v|, and the index of
    the last entry equal to it that is kept (lowest indices first), so that exactly k survive.
    """
    bits = _KEY_BITS[x.dtype]
    prefix, above, hist = -1, 0, None
    for shift in range(bits - 16, -1, -16):
        prefix_shift = shift + 16
        hist = _histogram(x, base, shift, prefix_shift, prefix if prefix >= 0 else -1)
        counts = hist.sum(dim=0)
        at_least = counts.flip(0).cumsum(0).flip(0)
        digit = int(torch.nonzero(at_least + above >= k).max())
        above += int(at_least[digit + 1]) if digit + 1 < BINS else 0
        prefix = digit if prefix < 0 else (prefix << 16) | digit
    need = k - above
    per_block = hist[:, prefix & 0xFFFF]                     # ties at the threshold, per block
    before = torch.cumsum(per_block, 0) - per_block
    block = int(torch.nonzero(before < need).max())
    n, blocks = x.numel(), hist.shape[0]
    start, end = n * block // blocks, n * (block + 1) // blocks
    base_ptr = base.data_ptr() if base is not None else 0
    cutoff = _kernels.nth_equal(DTYPE_CODES[x.dtype], base_ptr, x.data_ptr(), start, end, prefix, need - int(before[block]))
    return prefix, cutoff


def gta(
    base: torch.Tensor, others: Sequence[torch.Tensor], thresholds: Sequence[tuple[int, int]],
    weights: torch.Tensor, consensus: bool, normalize: bool, lam: float, divisor: float,
) -> torch.Tensor:
    """Fused task arithmetic; thresholds[i] = (key, cutoff) or (-1, -1) for no mask."""
    out = torch.empty_like(base)
    ptrs = torch.tensor([t.data_ptr() for t in others], dtype=torch.int64)
    thr = torch.tensor([t[0] for t in thresholds], dtype=torch.int64)
    cut = torch.tensor([t[1] for t in thresholds], dtype=torch.int64)
    w = weights.to(torch.float32).contiguous()
    _kernels.gta(
        DTYPE_CODES[base.dtype], base.data_ptr(), ptrs.data_ptr(), len(others), base.numel(),
        thr.data_ptr(), cut.data_ptr(), w.data_ptr(), int(consensus), int(normalize),
        float(lam), int(lam != 1), float(divisor), out.data_ptr(),
    )
    return out


def dot3(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float, float]:
    return _kernels.dot3(DTYPE_CODES[a.dtype], a.data_ptr(), b.data_ptr(), a.numel())


def lerp2(a: torch.Tensor, b: torch.Tensor, ca: float, cb: float) -> torch.Tensor:
    out = torch.empty_like(a)
    _kernels.lerp2(DTYPE_CODES[a.dtype], a.data_ptr(), b.data_ptr(), a.numel(), ca, cb, out.data_ptr())
    return out
