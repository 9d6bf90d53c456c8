"""Spectral steps shared by the subspace merges (tsv.py, iso.py): truncated SVDs of task vectors
(deltas.py; randomised where the rank is small), the numerical rank, the orthogonal polar factor.

Arithmetic runs in float32 (float64 when the compute dtype is float64): LAPACK has no
half-precision SVD; results are cast back to the compute dtype once, at the end.

The randomised SVD is Halko, Martinsson & Tropp (SIAM Review 53(2), 2011), Algorithms 4.4
(subspace iteration) and 5.1, drawn from the tensor's seeded generator: ``torch.svd_lowrank``
draws from the global RNG, so its results would depend on which tensors ran before.

"Rank" is the numerical rank: singular values above ``tol · σ₁``, with ``tol`` the recipe's
``rank_tol`` or, by default, ``max(m, n) · ε`` of the working dtype (the tolerance of
``numpy.linalg.matrix_rank`` and LAPACK). A LoRA delta of rank r computed in float32 has r
singular values of substance and a tail of rounding noise some 10⁻⁷ · σ₁ below them: that tail
is not part of the task, so it is neither kept nor counted.
"""

from __future__ import annotations

from dataclasses import dataclass

from mergesmith._torch import torch
from mergesmith.methods.deltas import Deltas, block_rows, work_dtype

OVERSAMPLE = 10  # extra probe columns of the randomised range finder (Halko et al. §4.2)
POWER_ITERATIONS = 1  # subspace iterations (Halko et al. Alg. 4.4); each costs two passes over the matrix
RANDOMISED_SHARE = 4  # randomised while the probe width is at most min(shape) / this
# ... and min(shape) is at least this: below, the full SVD costs a few ms (255 × 1024 float32:
# ~20 ms on this CPU, against ~1 ms randomised) and gives the exact triplets, where one power
# iteration leaves the k-th direction mixed with the next ones when the spectrum is flat.
RANDOMISED_MIN_SIDE = 256
FIRST_PROBE = 32  # probe width of the first try at a numerical rank; doubled until it fits
RESIDUAL_BLOCK, RESIDUAL_STEPS = 4, 3  # block power steps estimating what a probe left out
FLAT = 0.05  # probe still this flat at its last column: go to the full SVD (cost only, same triplets)
ORTHONORMAL = 1e-10  # largest |QᵀQ − I| accepted from CholeskyQR2 (float64), else Householder QR


@dataclass(frozen=True)
class Triplets:
    """Singular triplets ``u diag(s) vh``, largest first."""

    u: torch.Tensor  # [m, r]
    s: torch.Tensor  # [r]
    vh: torch.Tensor  # [r, n]

    def __len__(self) -> int:
        return self.s.numel()

    def head(self, k: int) -> Triplets:
        return Triplets(self.u[:, :k], self.s[:k], self.vh[:k])

    def above(self, floor: float) -> Triplets:
        """The triplets whose singular value exceeds ``floor``; all of them for a NaN floor (from
        a matrix holding NaN: they carry it to the merged tensor, whose check names the input)."""
        return self if floor != floor else self.head(int((self.s > floor).sum()))


def mm(x, m: torch.Tensor) -> torch.Tensor:
    return x.mm(m) if isinstance(x, Deltas) else (m.mT @ x.mT).mT


def tmm(x, m: torch.Tensor) -> torch.Tensor:
    """``xᵀ m``."""
    return x.tmm(m) if isinstance(x, Deltas) else (m.mT @ x).mT


def tolerance(shape, dtype: torch.dtype, rank_tol: float | None) -> float:
    """Relative singular-value floor of the numerical rank (see the module docstring)."""
    return rank_tol if rank_tol is not None else max(shape) * torch.finfo(dtype).eps


def _svd(a: torch.Tensor) -> Triplets:
    """Thin SVD. A wide matrix goes through its transpose (LAPACK takes several times longer on
    it), a tall and narrow one through ``orthonormal`` and the SVD of the small factor: LAPACK's
    SVD of such a matrix with 32 columns or more ran as slowly as its QR under a merge's threads."""
    if a.shape[0] < a.shape[1]:
        t = _svd(a.mT)
        return Triplets(t.vh.mT, t.s, t.u.mT)
    if a.shape[0] >= RANDOMISED_SHARE * a.shape[1] > 0:
        q = orthonormal(a)
        small = _lapack_svd(q.mT @ a)
        return Triplets(q @ small.u, small.s, small.vh)
    return _lapack_svd(a)


def _lapack_svd(a: torch.Tensor) -> Triplets:
    """LAPACK's thin SVD; NaN triplets for a matrix holding NaN or infinity, which LAPACK refuses
    with an exception (and MKL with a message on stderr): the NaN reaches the merged tensor, whose
    check (execute/finite.py) names the input that holds them."""
    if not bool(torch.isfinite(a.sum())) and not bool(torch.isfinite(a).all()):
        r = min(a.shape)
        nan = lambda *shape: a.new_full(shape, float("nan"))  # noqa: E731
        return Triplets(nan(a.shape[0], r), nan(r), nan(r, a.shape[1]))
    return Triplets(*torch.linalg.svd(a, full_matrices=False))


def exact(x) -> Triplets:
    return _svd(x.dense() if isinstance(x, Deltas) else x)


def orthonormal(y: torch.Tensor) -> torch.Tensor:
    """An orthonormal basis of the columns of a tall ``y``: CholeskyQR2 (Fukaya et al., 2014) on a
    float64 Gram, checked, else Householder QR. LAPACK's QR of a tall matrix runs as many small
    threaded steps: with a merge's two worker threads on two cores it took ~100 ms for 5632 × 36
    instead of < 1 ms; this is three small products and a triangular solve. Any orthonormal basis
    of the range gives the same triplets downstream."""
    basis = y.to(torch.float64)
    for _ in range(2):
        r, info = torch.linalg.cholesky_ex(basis.mT @ basis, upper=True)
        if int(info) != 0:  # columns (numerically) dependent: the Gram is not positive definite
            return torch.linalg.qr(y).Q
        basis = torch.linalg.solve_triangular(r, basis, upper=True, left=False)
    eye = torch.eye(y.shape[1], dtype=torch.float64, device=y.device)
    if float((basis.mT @ basis - eye).abs().max()) > ORTHONORMAL:
        return torch.linalg.qr(y).Q
    return basis.to(y.dtype)


def _gaussian(x, columns: int, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(x.shape[1], columns, generator=generator, dtype=x.dtype).to(x.device)


def randomised(x, width: int, generator: torch.Generator | None, check: int = 0):
    """``width`` approximate leading triplets: Gaussian probe, subspace iteration, small SVD.

    With ``check`` columns, also the start of ``residual_norm``'s estimate, carried along the
    last two products (one at ``width + check`` columns costs about what one at ``width`` does):
    returns ``(triplets, Rᵀ R v₀)`` for a seeded orthonormal ``v₀`` and ``R = x − q qᵀ x``, the
    part of ``x`` outside the probe's range ``q``. Needs ``POWER_ITERATIONS`` ≥ 1."""
    q = orthonormal(mm(x, _gaussian(x, width, generator)))
    for i in range(POWER_ITERATIONS):
        z = orthonormal(tmm(x, q))
        if check and i == POWER_ITERATIONS - 1:
            z = torch.cat([z, orthonormal(_gaussian(x, check, generator))], dim=1)
        y = mm(x, z)
        q = orthonormal(y[:, :width])
    if check:
        rv = y[:, width:]
        q = torch.cat([q, rv - q @ (q.mT @ rv)], dim=1)  # R v₀ = x v₀ less its part in range(q)
    both = tmm(x, q)  # [xᵀ q, xᵀ R v₀], and xᵀ R v₀ = Rᵀ R v₀ since R v₀ ⟂ q
    small = _svd(both[:, :width].mT)
    found = Triplets(q[:, :width] @ small.u, small.s, small.vh)
    return (found, both[:, width:]) if check else found


def _randomises(width: int, x: torch.Tensor) -> bool:
    return min(x.shape) >= max(RANDOMISED_MIN_SIDE, width * RANDOMISED_SHARE)


def top(x: torch.Tensor, k: int, generator: torch.Generator | None) -> Triplets:
    """The ``k`` leading triplets: randomised when ``k`` ≪ min(shape), else from the full SVD."""
    k = min(k, *x.shape)
    if k <= 0:
        empty = torch.zeros(0, dtype=x.dtype, device=x.device)
        return Triplets(empty.new_zeros(x.shape[0], 0), empty, empty.new_zeros(0, x.shape[1]))
    found = randomised(x, k + OVERSAMPLE, generator) if _randomises(k + OVERSAMPLE, x) else exact(x)
    return found.head(k)


def residual_norm(x, u: torch.Tensor, v: torch.Tensor, steps: int) -> float:
    """Estimate of the spectral norm of ``R = x − u uᵀ x`` (``u`` orthonormal): ``steps`` block
    power steps from ``v`` (``randomised``'s ``Rᵀ R v₀``), the last one ending at ``‖R v‖``. The
    Frobenius norm would be a bound, but for a noise tail it exceeds the spectral norm by
    ~√min(m, n)/2 and would never accept a low rank."""
    for step in range(steps):
        v = orthonormal(v)
        w = mm(x, v)
        w = w - u @ (u.mT @ w)  # the residual applied to v
        if step == steps - 1:
            return float(torch.linalg.vector_norm(w, dim=0).max())
        v = tmm(x, w)  # its transpose applied to w (w is already orthogonal to u)
    raise ValueError("residual_norm needs at least one step")


def numerical(x, generator: torch.Generator | None, rel_tol: float) -> Triplets:
    """The triplets above ``rel_tol · σ₁``: randomised probes of doubling width until what they
    leave out is under that floor (with a factor 2 for the estimate), else the full SVD: at once
    when the probe's spectrum is still flat at its last column (a rank far beyond the probe)."""
    width = FIRST_PROBE
    while _randomises(width, x):
        found, v = randomised(x, width, generator, check=RESIDUAL_BLOCK)
        floor = rel_tol * float(found.s[0])
        if 2 * residual_norm(x, found.u, v, RESIDUAL_STEPS - 1) <= floor:
            return found.above(floor)
        if float(found.s[-1]) > FLAT * float(found.s[0]):
            break
        width *= 2
    found = exact(x)
    return found.above(rel_tol * float(found.s[0]))


def polar(a: torch.Tensor) -> torch.Tensor:
    """Orthogonal polar factor ``P Qᵀ`` of ``a = P S Qᵀ`` (the nearest matrix with orthonormal columns)."""
    if a.shape[1] == 0:
        return a
    t = _svd(a)
    return t.u @ t.vh


def concat(parts: list[Triplets]) -> Triplets:
    return Triplets(
        torch.cat([t.u for t in parts], dim=1), torch.cat([t.s for t in parts]), torch.cat([t.vh for t in parts])
    )


def orthogonalised(t: Triplets) -> Triplets:
    """``U ← polar(U)``, ``V ← polar(V)``: the concatenated bases made orthonormal (TSV-Merge's orthogonalisation)."""
    return Triplets(polar(t.u), t.s, polar(t.vh.mT).mT)


def assemble(base: torch.Tensor, t: Triplets, alpha: float) -> torch.Tensor:
    """``base + alpha · u diag(s) vh`` by row blocks in one reused buffer (each block's kernels in
    cache), cast to the base's dtype once."""
    if len(t) == 0:
        return base.clone()
    us = t.u * (t.s * alpha)
    out = torch.empty_like(base)
    rows = block_rows(base.shape[1])
    buffer = us.new_empty(min(rows, base.shape[0]), base.shape[1])
    for i in range(0, base.shape[0], rows):
        block = buffer[: min(rows, base.shape[0] - i)].copy_(base[i : i + rows])
        out[i : i + rows] = block.addmm_(us[i : i + rows], t.vh)
    return out


def mean_delta(tensors, base_index: int, others: list[int], alpha: float) -> torch.Tensor:
    """Tensors that are not matrices: ``base + alpha · mean_i δ_i``."""
    base = tensors[base_index]
    dtype = work_dtype(base.dtype)
    total = sum(tensors[i].to(dtype) - base.to(dtype) for i in others)
    return (base.to(dtype) + total * (alpha / len(others))).to(base.dtype)
