"""Fused CPU kernels (C, built at install time when a compiler is there).

Each kernel implements one range of a method step (methods/steps.py): the TIES threshold
pass (``histogram``, ``nth_equal``), the task-arithmetic combine (``gta``), slerp's norms and
cosine (``norm2``, ``scaled_dot``, ``scaled_product``, ``widen``) and its blend (``lerp2``).
The step picks the kernel when ``available(*tensors)`` says it can take the range's tensors
(contiguous, on the CPU, float32/bfloat16/float16), torch otherwise; the torch code in the
step defines the numbers and the kernels agree bit for bit (tests/methods/test_native.py).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from mergesmith._torch import torch

try:
    from mergesmith.native import _kernels
except ImportError:  # built without the extension: callers use the torch path
    _kernels = None

# Keyed by dtype name, so importing this module does not import torch.
_CODES = {"float32": 0, "bfloat16": 1, "float16": 2}
BINS = 1 << 16  # histogram bins: one per 16-bit digit of a magnitude key
MAX_MODELS = 64  # models the gta kernel takes at once (kernels.c)
PROBE = 1 << 20  # elements of the longest probe of torch's summation order (slerp's chunk)


def code(dtype) -> int | None:
    """The kernels' code for a torch dtype, None if they do not take it."""
    return _CODES.get(str(dtype).removeprefix("torch."))


def available(*tensors: torch.Tensor) -> bool:
    if _kernels is None or not tensors:
        return False
    dtype = tensors[0].dtype
    return code(dtype) is not None and all(
        t.dtype == dtype and t.device.type == "cpu" and t.is_contiguous() for t in tensors
    )


def _ptr(t: torch.Tensor | None) -> int:
    return t.data_ptr() if t is not None else 0


def _checked(
    n: int, *inputs: torch.Tensor | None, out: torch.Tensor | None = None, out_dtype: torch.dtype | None = None
) -> int:
    """The kernels' dtype code for ``inputs``, after checking what the C side cannot: every input
    (None: an absent base) is a contiguous CPU tensor of one dtype the kernels take, holding at
    least ``n`` elements, and so is ``out`` (of ``out_dtype``, default the inputs'). A caller's
    mistake is then a ValueError here, never a read or write past a buffer."""
    present = [t for t in inputs if t is not None]
    dtype = present[0].dtype
    dt = code(dtype)
    if dt is None:
        raise ValueError(f"native kernels take float32, bfloat16 or float16, not {dtype}")
    wanted = [(t, dtype) for t in present] + ([(out, out_dtype or dtype)] if out is not None else [])
    for t, want in wanted:
        if t.dtype != want or t.device.type != "cpu" or not t.is_contiguous() or t.numel() < n:
            raise ValueError(
                f"native kernel given a {'contiguous' if t.is_contiguous() else 'strided'} {t.dtype} "
                f"tensor of {t.numel()} elements on {t.device}; it needs {want} on the CPU, "
                f"contiguous, with at least {n} elements"
            )
    return dt


def histogram(x: torch.Tensor, base: torch.Tensor | None, shift: int, prefix: int, hist: torch.Tensor) -> torch.Tensor:
    """Add to ``hist`` (int64, BINS) the counts of the 16-bit digit ``(key >> shift) & 0xFFFF`` of
    the magnitude keys of ``x - base`` (x without a base), counting only keys whose higher bits
    ``key >> (shift + 16)`` equal ``prefix`` when ``prefix >= 0``. One range of the TIES threshold pass."""
    dt = _checked(x.numel(), x, base)
    if hist.dtype != torch.int64 or not hist.is_contiguous() or hist.numel() != BINS or hist.device.type != "cpu":
        raise ValueError(
            f"native kernel histogram given {hist.numel()} {hist.dtype} counts; it needs a contiguous "
            f"int64 CPU tensor of {BINS}"
        )
    _kernels.hist_delta(dt, _ptr(base), x.data_ptr(), x.numel(), 1, shift, shift + 16, prefix, hist.data_ptr())
    return hist


def nth_equal(x: torch.Tensor, base: torch.Tensor | None, key: int, m: int) -> tuple[int, int]:
    """The index in ``x`` of the m-th (1-based) entry whose magnitude key of ``x - base`` is
    ``key`` (-1 if there is none), and how many such entries the scan saw (the tie scan)."""
    dt = _checked(x.numel(), x, base)
    return _kernels.nth_equal(dt, _ptr(base), x.data_ptr(), 0, x.numel(), key, m)


def gta(
    base: torch.Tensor,
    others: Sequence[torch.Tensor],
    thresholds: Sequence[tuple[int, int]],
    weights: torch.Tensor,
    consensus: bool,
    normalize: bool,
    lam: float,
    divisor: float,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fused task arithmetic; thresholds[i] = (key, cutoff) or (-1, -1) for no mask. ``out``: a
    buffer of at least ``base.numel()`` elements to reuse (a view of it is returned)."""
    out = torch.empty_like(base) if out is None else out[: base.numel()]
    _checked(base.numel(), base, *others, out=out)
    if not len(others) == len(thresholds) == weights.numel():
        raise ValueError(f"gta: {len(others)} tensors, {len(thresholds)} thresholds, {weights.numel()} weights")
    ptrs = torch.tensor([t.data_ptr() for t in others], dtype=torch.int64)
    thr = torch.tensor([t[0] for t in thresholds], dtype=torch.int64)
    cut = torch.tensor([t[1] for t in thresholds], dtype=torch.int64)
    w = weights.to(torch.float32).contiguous()
    _kernels.gta(
        code(base.dtype),
        base.data_ptr(),
        ptrs.data_ptr(),
        len(others),
        base.numel(),
        thr.data_ptr(),
        cut.data_ptr(),
        w.data_ptr(),
        int(consensus),
        int(normalize),
        float(lam),
        int(lam != 1),
        float(divisor),
        out.data_ptr(),
    )
    return out


def widen(src: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out`` (float32, same length) = src, exactly."""
    _checked(src.numel(), src, out=out, out_dtype=torch.float32)
    _kernels.widen(code(src.dtype), src.data_ptr(), src.numel(), out.data_ptr())
    return out


# The torch releases whose summation order (vector width, cascade, split over threads) the
# order-reproducing kernels (norm2, scaled_dot) are tested against in CI. On any other release
# they stand aside and torch computes: the probes below check a few inputs, not torch's code, so
# they alone cannot promise the same bits.
ORDER_TESTED_TORCH = ("2.13.",)


def _order_tested() -> bool:
    return torch.__version__.startswith(ORDER_TESTED_TORCH)


@functools.cache
def norm_lanes() -> int | None:
    """torch's float32 vector width in its contiguous norm on this CPU (8 or 16): the one whose
    summation order gives torch's bits on two probes; None if neither does (torch computes then).
    Cached: a property of this process's torch and CPU, found once (~10 ms)."""
    if _kernels is None or not _order_tested():
        return None
    gen = torch.Generator().manual_seed(0)
    probes = [
        (torch.randn(PROBE + 13, generator=gen) * scale).to(dtype)
        for dtype, scale in ((torch.bfloat16, 3.0), (torch.float16, 0.25))
    ]
    expected = [torch.linalg.vector_norm(p.float()).item() for p in probes]
    for lanes in (8, 16):
        if all(_kernels.norm2(code(p.dtype), p.data_ptr(), p.numel(), lanes) == e for p, e in zip(probes, expected)):
            return lanes
    return None


def norm2(src: torch.Tensor) -> float | None:
    """``torch.linalg.vector_norm(src.float()).item()`` for a bf16/fp16 ``src``, bit for bit, without
    the float32 copy; None where the kernel cannot take ``src`` or reproduce torch on this CPU."""
    if not available(src) or src.dtype == torch.float32:
        return None
    lanes = norm_lanes()
    _checked(src.numel(), src)
    return None if lanes is None else _kernels.norm2(code(src.dtype), src.data_ptr(), src.numel(), lanes)


def scaled_product(a: torch.Tensor, b: torch.Tensor, na: float, nb: float, out: torch.Tensor) -> torch.Tensor:
    """``out`` (float32) = (a / na) * (b / nb), each operation rounded to float32 as torch does."""
    _checked(a.numel(), a, b, out=out, out_dtype=torch.float32)
    _kernels.scaled_product(code(a.dtype), a.data_ptr(), b.data_ptr(), a.numel(), na, nb, out.data_ptr())
    return out


MAX_THREADS = 1024  # torch threads scaled_dot models (its per-thread buffer in kernels.c)


@functools.cache
def dot_lanes() -> int | None:
    """torch's float32 vector width in a full contiguous sum on this CPU (8 or 16), as for
    ``norm_lanes``: the one whose cascade order gives torch's bits for slerp's cosine on probes of
    one and of several thread parts; None if neither does (torch sums a float32 buffer then)."""
    if _kernels is None or not _order_tested():
        return None
    gen = torch.Generator().manual_seed(1)
    probes = []
    for n, dtype in (
        (PROBE, torch.bfloat16),
        (PROBE - 77, torch.float16),
        (40_000 + 3, torch.bfloat16),
        (999, torch.float32),
    ):
        # Magnitudes spread over decades, so that different summation orders round differently.
        a = (torch.randn(n, generator=gen) * torch.rand(n, generator=gen) * 30).to(dtype)
        b = (a.float() + torch.randn(n, generator=gen)).to(dtype)
        probes.append((a, b, 3.5, 0.75))
    for lanes in (8, 16):
        if all(_dot(a, b, na, nb, lanes) == _torch_dot(a, b, na, nb) for a, b, na, nb in probes):
            return lanes
    return None


def _torch_dot(a: torch.Tensor, b: torch.Tensor, na: float, nb: float) -> float:
    """What slerp computes without the kernel (its float32 buffers, then torch's sum)."""
    x, y = a.to(torch.float32), b.to(torch.float32)
    return ((x / na) * (y / nb)).sum().item()


def _dot(a: torch.Tensor, b: torch.Tensor, na: float, nb: float, lanes: int, threads: int | None = None) -> float:
    threads = torch.get_num_threads() if threads is None else threads
    _checked(a.numel(), a, b)
    return _kernels.scaled_dot(code(a.dtype), a.data_ptr(), b.data_ptr(), a.numel(), na, nb, lanes, threads)


def scaled_dot(a: torch.Tensor, b: torch.Tensor, na: float, nb: float) -> float | None:
    """``((a / na) * (b / nb)).sum()`` in float32 (``a``, ``b`` widened), torch's bits for this
    process's thread count, without the float32 product buffer; None where the kernel cannot
    take the tensors (too short, not contiguous) or reproduce torch's order here (another
    summation order, more than MAX_THREADS threads)."""
    lanes = dot_lanes()
    if lanes is None or not available(a, b) or a.numel() != b.numel() or a.numel() < 4 * lanes:
        return None
    threads = torch.get_num_threads()
    return None if threads > MAX_THREADS else _dot(a, b, na, nb, lanes, threads)


def dot3(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float, float]:
    _checked(a.numel(), a, b)
    return _kernels.dot3(code(a.dtype), a.data_ptr(), b.data_ptr(), a.numel())


def lerp2(a: torch.Tensor, b: torch.Tensor, ca: float, cb: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """``ca * a + cb * b`` in float32, rounded to a's dtype; ``out`` as for ``gta``."""
    out = torch.empty_like(a) if out is None else out[: a.numel()]
    _checked(a.numel(), a, b, out=out)
    _kernels.lerp2(code(a.dtype), a.data_ptr(), b.data_ptr(), a.numel(), ca, cb, out.data_ptr())
    return out
