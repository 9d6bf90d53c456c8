"""The C kernels agree bit for bit with the pure-torch reference they accelerate."""

from __future__ import annotations

import itertools
import platform
import shutil
import sys

import pytest
import torch
from calls import call

from mergesmith import native
from mergesmith.methods import threshold as trim
from mergesmith.methods.consensus import sign_agreement
from mergesmith.methods.steps import spans
from mergesmith.methods.threshold import RadixSelect
from mergesmith.methods.topk import top_k_mask

needs_kernels = pytest.mark.skipif(not native.available(torch.zeros(1)), reason="C kernels not built")


@pytest.mark.skipif(not (sys.platform.startswith("linux") and shutil.which("gcc")), reason="no C compiler here")
def test_kernels_are_built_where_a_compiler_exists():
    """The extension is optional at install time; on Linux with gcc a failed build is a bug, not a fallback."""
    assert native._kernels is not None, "mergesmith/native/kernels.c did not build: pip install -v -e . shows why"


DTYPES = [torch.bfloat16, torch.float16, torch.float32]


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int32 if t.dtype == torch.float32 else torch.int16)


def magnitude_threshold(x: torch.Tensor, base: torch.Tensor, k: int, chunk: int = 1 << 20) -> tuple[int, int]:
    """The TIES threshold pass's selection, fed ranges of ``chunk`` elements as the executor does."""
    select = RadixSelect(x.numel(), x.dtype, k, chunk)
    while True:
        lo, hi = select.scan or (0, x.numel())
        for start, stop in spans(lo, hi, chunk):
            select.add(start, x[start:stop], base[start:stop])
        if not select.next_sweep():
            return select.result()


def _reference(base, xs, weights, density, consensus, normalize, lam):
    """Task arithmetic as mergekit computes it, with the lowest-index top-k tie rule."""
    deltas = base.new_empty((len(xs), *base.shape))
    for row, x in enumerate(xs):
        delta = x - base
        if density < 1:
            delta = delta * top_k_mask(delta, max(1, int(density * delta.numel()))).to(delta.dtype)
        deltas[row] = delta
    w = torch.tensor(weights, dtype=base.dtype).reshape(-1, 1)
    deltas.mul_(w)
    if consensus:
        mask = sign_agreement(deltas, "sum")
        mixed, divisor = (deltas * mask).sum(0), (w * mask).sum(0)
        divisor[divisor == 0] = 1
    else:
        mixed, divisor = deltas.sum(0), w.sum(0)
        divisor[divisor.abs() < 1e-8] = 1
    if normalize:
        mixed /= divisor
    if lam != 1:
        mixed *= lam
    return base + mixed


@needs_kernels
@pytest.mark.parametrize("dtype", DTYPES)
def test_gta_kernel_is_bit_exact(dtype):
    gen = torch.Generator().manual_seed(0)
    for n_models, consensus, normalize, lam, density in itertools.product(
        [1, 3], [True, False], [True, False], [1.0, 0.7], [1.0, 0.37]
    ):
        base = torch.randn(70_001, generator=gen).to(dtype)
        xs = [(base.float() + 0.02 * torch.randn(base.shape, generator=gen)).to(dtype) for _ in range(n_models)]
        weights = [0.6, 0.9, 0.35][:n_models]
        thresholds = [
            magnitude_threshold(x, base, max(1, int(density * x.numel()))) if density < 1 else (-1, -1) for x in xs
        ]
        w = torch.tensor(weights, dtype=dtype)
        total = float(w.sum())
        fast = native.gta(base, xs, thresholds, w, consensus, normalize, lam, 1.0 if abs(total) < 1e-8 else total)
        slow = _reference(base, xs, weights, density, consensus, normalize, lam)
        assert torch.equal(_bits(fast), _bits(slow)), (n_models, consensus, normalize, lam, density)


COUNTERS = [pytest.param(dtype, True, marks=needs_kernels, id=f"C-{dtype}") for dtype in DTYPES] + [
    pytest.param(dtype, False, id=f"torch-{dtype}") for dtype in (*DTYPES, torch.float64)
]  # the kernels take no float64


@pytest.mark.parametrize("dtype, kernels", COUNTERS)
def test_threshold_matches_top_k_mask_including_ties(dtype, kernels, monkeypatch):
    """The threshold pass keeps exactly top_k_mask's entries, counted by the kernels or by torch,
    in one range or in odd ranges whose groups put the tie cutoff in a later group."""
    if not kernels:
        monkeypatch.setattr(native, "_kernels", None)
    monkeypatch.setattr(trim, "GROUP_MIN", 30_011)  # small groups: the tie scan reads a later one
    gen = torch.Generator().manual_seed(1)
    base = torch.randn(200_003, generator=gen).to(dtype)
    x = base.clone()
    x[::3] = (base[::3].float() + 0.01).to(dtype)  # many equal deltas: a large tie block
    delta = x - base
    for k in (1, 1000, 66_000, 150_000):
        mask = top_k_mask(delta, k)
        kept_idx = mask.nonzero().reshape(-1)
        mag = delta.abs()
        threshold = mag[mask].min()
        ties_kept = kept_idx[mag[kept_idx] == threshold]
        for chunk in (1 << 20, 7_001):
            key, cutoff = magnitude_threshold(x, base, k, chunk)
            assert int(ties_kept.max()) == cutoff, (k, chunk)


@needs_kernels
@pytest.mark.parametrize("dtype", DTYPES)
def test_lerp2_matches_torch_float32_combination(dtype):
    gen = torch.Generator().manual_seed(2)
    a, b = (torch.randn(100_003, generator=gen).to(dtype) for _ in range(2))
    ca, cb = torch.tensor(0.61), torch.tensor(0.47)
    expected = (ca * a.float() + cb * b.float()).to(dtype)
    assert torch.equal(_bits(native.lerp2(a, b, float(ca), float(cb))), _bits(expected))


@needs_kernels
def test_dot3():
    a, b = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([4.0, -5.0, 6.0])
    assert native.dot3(a, b) == (14.0, 77.0, 12.0)


@needs_kernels
def test_half_conversions_cover_specials():
    values = torch.tensor([0.0, -0.0, 1e-8, -6e-8, 6.1e-5, 65504.0, 65519.0, 65520.0, float("inf"), -float("inf")])
    for dtype in (torch.float16, torch.bfloat16):
        a = values.to(dtype)
        zeros = torch.zeros_like(a)
        out = native.lerp2(a, zeros, 1.0, 0.0)  # -0 * 1 + 0 * 0 is +0, as in torch
        assert torch.equal(_bits(out), _bits((1.0 * a.float() + 0.0 * zeros.float()).to(dtype)))
        scaled = native.lerp2(a, a, 0.5, 0.25)  # 0.75 * a, rounded
        assert torch.equal(_bits(scaled), _bits((0.5 * a.float() + 0.25 * a.float()).to(dtype)))


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_norm2_gives_torchs_float32_norm_bits(dtype):
    """slerp's chunk norms: the kernel's summation order reproduces torch's, tails and all sizes."""
    if platform.machine() in ("x86_64", "AMD64"):
        # torch's float vector is 8 or 16 floats wide on x86-64: one of them must match here.
        assert native.norm_lanes() in (8, 16), "norm2 reproduces neither summation order: slerp pays a float32 copy"
    if native.norm_lanes() is None:
        pytest.skip(f"torch's norm order on {platform.machine()} is not one the kernel reproduces")
    gen = torch.Generator().manual_seed(3)
    for n in (1, 7, 8, 9, 15, 16, 17, 31, 1000, 70_001, 1 << 20):
        for scale in (1e-3, 1.0, 40.0):
            x = (torch.randn(n, generator=gen) * scale).to(dtype)
            assert native.norm2(x) == torch.linalg.vector_norm(x.float()).item(), (n, scale)


@needs_kernels
def test_norm2_declines_what_it_cannot_reproduce():
    assert native.norm2(torch.ones(10)) is None  # float32: FMA would matter
    assert native.norm2(torch.ones(10, 2, dtype=torch.bfloat16)[:, 0]) is None  # not contiguous


@needs_kernels
@pytest.mark.parametrize("threads", [1, 2, 3, 5, 8, 13, 32])
def test_scaled_dot_gives_torchs_sum_bits(threads):
    """slerp's cosine: the kernel sums the products in torch's cascade order, per thread part, and
    the parts as torch adds them (fewer threads than a vector's lanes, or more)."""
    if platform.machine() in ("x86_64", "AMD64"):
        assert native.dot_lanes() in (8, 16), (
            "scaled_dot reproduces neither summation order: slerp pays a product buffer"
        )
    if native.dot_lanes() is None:
        pytest.skip(f"torch's sum order on {platform.machine()} is not one the kernel reproduces")
    gen = torch.Generator().manual_seed(6)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for n in (32, 33, 100, 1000, 32767, 32768, 32769, 65537, 100_003, (1 << 20) - 1, 1 << 20, 3_000_017):
            for dtype in DTYPES:
                a = (torch.randn(n, generator=gen) * torch.rand(n, generator=gen) * 30).to(
                    dtype
                )  # spread: orders differ
                b = (0.5 * a.float() + torch.randn(n, generator=gen)).to(dtype)
                na, nb = float(torch.linalg.vector_norm(a.float())), float(torch.linalg.vector_norm(b.float()))
                expected = ((a.float() / na) * (b.float() / nb)).sum().item()
                got = native.scaled_dot(a, b, na, nb)
                assert got == (None if n < 4 * native.dot_lanes() else expected), (threads, n, dtype)
    finally:
        torch.set_num_threads(before)


@needs_kernels
def test_scaled_dot_declines_what_it_cannot_reproduce():
    a = torch.ones(20, dtype=torch.bfloat16)
    assert native.scaled_dot(a, a, 1.0, 1.0) is None  # shorter than four vectors
    strided = torch.ones(200, 2, dtype=torch.bfloat16)[:, 0]
    assert native.scaled_dot(strided, strided, 1.0, 1.0) is None  # not contiguous
    assert native.scaled_dot(a, torch.ones(20, dtype=torch.float16), 1.0, 1.0) is None  # mixed dtypes


@pytest.mark.parametrize("disabled", [("norm2",), ("scaled_dot",), ("norm2", "scaled_dot")])
def test_slerp_without_a_kernel_gives_the_same_bits(monkeypatch, disabled):
    """The torch path (no kernel, or a CPU whose order it cannot reproduce) writes the same tensor."""
    gen = torch.Generator().manual_seed(4)
    a = torch.randn(3 << 20, generator=gen).to(torch.bfloat16)  # several 2^20-element chunks
    b = (a.float() + 0.3 * torch.randn(a.shape, generator=gen)).to(torch.bfloat16)
    fast = call("slerp", [a, b], 0, {"t": 0.3})
    for name in disabled:
        monkeypatch.setattr(native, name, lambda *args: None)
    assert torch.equal(_bits(call("slerp", [a, b], 0, {"t": 0.3})), _bits(fast))


@pytest.mark.skipif(native._kernels is None, reason="built without the C extension")
@pytest.mark.parametrize(
    "call",
    [
        lambda a, b, short: native.lerp2(a, b, 0.5, 0.5, short),  # out too short
        lambda a, b, short: native.lerp2(a, b.to(torch.float16), 0.5, 0.5),  # mixed dtypes
        lambda a, b, short: native.dot3(a, b[:-1]),  # b shorter than a
        lambda a, b, short: native.widen(a, torch.empty(a.numel(), dtype=torch.bfloat16)),  # out not float32
        lambda a, b, short: native.scaled_product(a, b[::2], 1.0, 1.0, torch.empty(a.numel())),  # strided
        lambda a, b, short: native.gta(a, [b], [(-1, -1)], torch.ones(2), False, False, 1.0, 1.0),  # 2 weights, 1 model
        lambda a, b, short: native.lerp2(a.to(torch.int32), b.to(torch.int32), 0.5, 0.5),  # dtype the kernels lack
        lambda a, b, short: native.histogram(a, b, 0, -1, torch.zeros(10, dtype=torch.int64)),  # too few bins
        lambda a, b, short: native.nth_equal(a, b[:-1], 0, 1),  # base shorter than x
    ],
)
def test_kernels_refuse_what_would_read_or_write_past_a_buffer(call):
    a = torch.randn(1000).to(torch.bfloat16)
    b = torch.randn(1000).to(torch.bfloat16)
    with pytest.raises(ValueError, match="native kernel|native kernels take|gta:"):
        call(a, b, torch.empty(10, dtype=torch.bfloat16))


def test_order_kernels_stand_aside_on_an_untested_torch(monkeypatch):
    """On a torch release CI never tested, slerp's statistics come from torch itself."""
    monkeypatch.setattr(torch, "__version__", "9.9.0")
    native.norm_lanes.cache_clear()
    native.dot_lanes.cache_clear()
    try:
        assert native.norm_lanes() is None and native.dot_lanes() is None
        a = torch.randn(5000).to(torch.bfloat16)
        assert native.norm2(a) is None and native.scaled_dot(a, a, 1.0, 1.0) is None
    finally:
        native.norm_lanes.cache_clear()
        native.dot_lanes.cache_clear()
