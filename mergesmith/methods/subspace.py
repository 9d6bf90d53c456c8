"""Spectral steps shared by the subspace merges (tsv.py, iso.py): task deltas, truncated SVDs
(randomised where the rank is small), the numerical rank, the orthogonal polar factor.

Arithmetic runs in float32 (float64 when the compute dtype is float64): LAPACK has no
half-precision SVD; results are cast back to the compute dtype once, at the end.

The randomised SVD is Halko, Martinsson & Tropp (SIAM Review 53(2), 2011), Algorithms 4.4
(subspace iteration) and 5.1, drawn from the tensor's seeded generator: ``torch.svd_lowrank``
draws from the global RNG, so its results would depend on which tensors ran before. Above
``LARGE`` elements (embeddings, lm_head) the randomised products read the task vectors by row
blocks from the inputs (``Deltas``), so no float32 copy of such a matrix is held whole.

"Rank" is the numerical rank: singular values above ``tol · σ₁``, with ``tol`` the recipe's
``rank_tol`` or, by default, ``max(m, n) · ε`` of the working dtype (the tolerance of
``numpy.linalg.matrix_rank`` and LAPACK). A LoRA delta of rank r computed in float32 has r
singular values of substance and a tail of rounding noise some 10⁻⁷ · σ₁ below them: that tail
is not part of the task, so it is neither kept nor counted.
"""

from __future__ import annotations

from dataclasses import dataclass

from mergesmith._torch import torch

OVERSAMPLE = 10  # extra probe columns of the randomised range finder (Halko et al. §4.2)
POWER_ITERATIONS = 1  # subspace iterations (Halko et al. Alg. 4.4); each costs two passes over the matrix
RANDOMISED_SHARE = 4  # randomised while the probe width is at most min(shape) / this
FIRST_PROBE = 32  # probe width of the first try at a numerical rank; doubled until it fits
RESIDUAL_BLOCK, RESIDUAL_STEPS = 4, 3  # power iteration estimating what a probe left out
FLAT = 0.05  # probe still this flat at its last column: go to the full SVD (cost only, same triplets)
LARGE = 1 << 25  # elements above which task vectors stay an operator (Deltas), never one matrix
BLOCK = 1 << 22  # elements per row block where a product would otherwise be a whole matrix


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
        """The triplets whose singular value exceeds ``floor``."""
        return self.head(int((self.s > floor).sum()))


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def delta(tensors, base_index: int, i: int) -> torch.Tensor:
    """Task vector ``x_i − base`` in the working dtype: one new matrix, the base subtracted in
    place (the same rounding as casting both first, without two more matrices of that size)."""
    out = tensors[i].to(work_dtype(tensors[base_index].dtype), copy=True)
    out -= tensors[base_index]
    return out


def delta_rows(tensors, base_index: int, i: int, lo: int, hi: int) -> torch.Tensor:
    """Rows ``lo:hi`` of ``x_i − base`` in the working dtype."""
    out = tensors[i][lo:hi].to(work_dtype(tensors[base_index].dtype), copy=True)
    out -= tensors[base_index][lo:hi]
    return out


class Deltas:
    """``Σ_i (x_i − base)`` over ``members`` as an operator: products by row blocks, so a
    vocabulary-sized matrix is never held whole in the working dtype (``dense()`` makes it)."""

    def __init__(self, tensors, base_index: int, members):
        self.tensors, self.base_index, self.members = tensors, base_index, tuple(members)
        self.shape = tuple(tensors[base_index].shape)
        self.dtype = work_dtype(tensors[base_index].dtype)
        self.device = tensors[base_index].device
        self.step = max(1, BLOCK // max(1, self.shape[1]))

    def rows(self, lo: int, hi: int) -> torch.Tensor:
        out = delta_rows(self.tensors, self.base_index, self.members[0], lo, hi)
        for i in self.members[1:]:
            out += delta_rows(self.tensors, self.base_index, i, lo, hi)
        return out

    def dense(self) -> torch.Tensor:
        return self.rows(0, self.shape[0])

    def mm(self, m: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.rows(i, i + self.step) @ m for i in range(0, self.shape[0], self.step)])

    def tmm(self, m: torch.Tensor) -> torch.Tensor:
        out = m.new_zeros(self.shape[1], m.shape[1])
        for i in range(0, self.shape[0], self.step):
            out += self.rows(i, i + self.step).mT @ m[i : i + self.step]
        return out


def deltas(tensors, base_index: int, members) -> torch.Tensor | Deltas:
    """The summed task vectors: a matrix, or an operator above ``LARGE`` elements."""
    op = Deltas(tensors, base_index, members)
    return op if op.shape[0] * op.shape[1] > LARGE else op.dense()


def mm(x, m: torch.Tensor) -> torch.Tensor:
    return x.mm(m) if isinstance(x, Deltas) else x @ m


def tmm(x, m: torch.Tensor) -> torch.Tensor:
    """``xᵀ m``."""
    return x.tmm(m) if isinstance(x, Deltas) else x.mT @ m


def tolerance(shape, dtype: torch.dtype, rank_tol: float | None) -> float:
    """Relative singular-value floor of the numerical rank (see the module docstring)."""
    return rank_tol if rank_tol is not None else max(shape) * torch.finfo(dtype).eps


def exact(x) -> Triplets:
    return Triplets(*torch.linalg.svd(x.dense() if isinstance(x, Deltas) else x, full_matrices=False))


def randomised(x: torch.Tensor, width: int, generator: torch.Generator | None) -> Triplets:
    """``width`` approximate leading triplets: Gaussian probe, subspace iteration, small SVD."""
    probe = torch.randn(x.shape[1], width, generator=generator, dtype=x.dtype).to(x.device)
    q = torch.linalg.qr(mm(x, probe)).Q
    for _ in range(POWER_ITERATIONS):
        q = torch.linalg.qr(tmm(x, q)).Q
        q = torch.linalg.qr(mm(x, q)).Q
    u, s, vh = torch.linalg.svd(tmm(x, q).mT, full_matrices=False)
    return Triplets(q @ u, s, vh)


def _randomises(width: int, x: torch.Tensor) -> bool:
    return width * RANDOMISED_SHARE <= min(x.shape)


def top(x: torch.Tensor, k: int, generator: torch.Generator | None) -> Triplets:
    """The ``k`` leading triplets: randomised when ``k`` ≪ min(shape), else from the full SVD."""
    k = min(k, *x.shape)
    if k <= 0:
        empty = torch.zeros(0, dtype=x.dtype, device=x.device)
        return Triplets(empty.new_zeros(x.shape[0], 0), empty, empty.new_zeros(0, x.shape[1]))
    found = randomised(x, k + OVERSAMPLE, generator) if _randomises(k + OVERSAMPLE, x) else exact(x)
    return found.head(k)


def residual_norm(x: torch.Tensor, t: Triplets, generator: torch.Generator | None) -> float:
    """Estimate of the spectral norm of ``x − u uᵀ x`` (``u`` orthonormal, spanning the probe):
    block power iteration from a seeded start. The Frobenius norm would be a bound, but for a
    noise tail it exceeds the spectral norm by ~√min(m, n)/2 and would never accept a low rank."""
    v = torch.randn(x.shape[1], RESIDUAL_BLOCK, generator=generator, dtype=x.dtype).to(x.device)
    w = v
    for _ in range(RESIDUAL_STEPS):
        v = torch.linalg.qr(v).Q
        w = mm(x, v)
        w -= t.u @ (t.u.mT @ w)  # the residual applied to v
        v = tmm(x, w)  # its transpose applied to w (w is already orthogonal to u)
    return float(torch.linalg.vector_norm(w, dim=0).max())


def numerical(x: torch.Tensor, generator: torch.Generator | None, rel_tol: float) -> Triplets:
    """The triplets above ``rel_tol · σ₁``: randomised probes of doubling width until what they
    leave out is under that floor (with a factor 2 for the estimate), else the full SVD: at once
    when the probe's spectrum is still flat at its last column (a rank far beyond the probe)."""
    width = FIRST_PROBE
    while _randomises(width, x):
        found = randomised(x, width, generator)
        floor = rel_tol * float(found.s[0])
        if 2 * residual_norm(x, found, generator) <= floor:
            return found.above(floor)
        if float(found.s[-1]) > FLAT * float(found.s[0]):
            break
        width *= 2
    found = exact(x)
    return found.above(rel_tol * float(found.s[0]))


def project_out(x: torch.Tensor, u: torch.Tensor) -> None:
    """``x ← x − u uᵀ x`` in place, in row blocks (``u`` orthonormal columns)."""
    coefficients = u.mT @ x
    rows = max(1, BLOCK // max(1, x.shape[1]))
    for i in range(0, x.shape[0], rows):
        x[i : i + rows] -= u[i : i + rows] @ coefficients


def polar(a: torch.Tensor) -> torch.Tensor:
    """Orthogonal polar factor ``P Qᵀ`` of ``a = P S Qᵀ`` (the nearest matrix with orthonormal columns)."""
    if a.shape[1] == 0:
        return a
    p, _, qh = torch.linalg.svd(a, full_matrices=False)
    return p @ qh


def concat(parts: list[Triplets]) -> Triplets:
    return Triplets(
        torch.cat([t.u for t in parts], dim=1), torch.cat([t.s for t in parts]), torch.cat([t.vh for t in parts])
    )


def orthogonalised(t: Triplets) -> Triplets:
    """``U ← polar(U)``, ``V ← polar(V)``: the concatenated bases made orthonormal (TSV-Merge's orthogonalisation)."""
    return Triplets(polar(t.u), t.s, polar(t.vh.mT).mT)


def assemble(base: torch.Tensor, t: Triplets, alpha: float) -> torch.Tensor:
    """``base + alpha · u diag(s) vh`` in row blocks, cast to the base's dtype once."""
    if len(t) == 0:
        return base.clone()
    us = t.u * (t.s * alpha)
    out = torch.empty_like(base)
    rows = max(1, BLOCK // max(1, base.shape[1]))
    for i in range(0, base.shape[0], rows):
        out[i : i + rows] = torch.addmm(base[i : i + rows].to(us.dtype), us[i : i + rows], t.vh).to(base.dtype)
    return out


def mean_delta(tensors, base_index: int, others: list[int], alpha: float) -> torch.Tensor:
    """Tensors that are not matrices: ``base + alpha · mean_i δ_i``."""
    base = tensors[base_index]
    total = sum(delta(tensors, base_index, i) for i in others)
    return (base.to(total.dtype) + total * (alpha / len(others))).to(base.dtype)
