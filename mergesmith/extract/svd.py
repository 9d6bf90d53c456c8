"""A task vector Δ = W_model − W_base as LoRA factors: its truncated SVD, split in two.

By Eckart–Young the best rank-r approximation of Δ in the Frobenius norm is U_r·Σ_r·V_rᵀ. The
factors are B = U_r·√Σ_r and A = √Σ_r·V_rᵀ, so B·A = U_r·Σ_r·V_rᵀ, and with ``lora_alpha = r``
PEFT's fold W + (alpha/r)·B·A adds exactly that truncation. √Σ goes to each side (mergekit's
default ``--distribute-scale`` does the same) because it gives both factors the same Frobenius
norm, √Σσ: stored in bf16/fp16, neither factor holds all of Δ's scale, and either can go on
training from there; putting Σ on B alone would give A orthonormal rows and B all the magnitude.

Spectrum: exact ``torch.linalg.svd`` where the rank asked for is not far below min(shape), and
where the rank is chosen by energy (which needs every singular value); otherwise the randomized
range finder of Halko, Martinsson & Tropp 2011 ("Finding structure with randomness"): Algorithm
4.4 (randomized subspace iteration, QR after every product) then Algorithm 5.1 (SVD of the small
projected matrix). It is the algorithm of ``torch.svd_lowrank``, written out so that the test
matrix comes from a generator seeded from the tensor's name (reproducible, order-independent).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from mergesmith._torch import torch

# Extra columns drawn beyond the rank: Halko et al. §4.2 find 5–10 enough for a good basis.
OVERSAMPLE = 10
# Power iterations: each sharpens the basis where singular values decay slowly (§4.5). On the worst
# case, a flat-spectrum noise delta 2048×5632 at rank 64, the kept energy was 84% of the optimum
# with 2 (torch.svd_lowrank's default), 92% with 4, 97% with 8, at about 0.4 s per iteration
# against 20–30 s for the exact SVD (2 shared cores). Decaying spectra lose far less.
POWER_ITERATIONS = 4
# Randomized only when the sketch (rank + OVERSAMPLE columns) is at most this share of
# min(shape): beyond it an exact SVD costs about as much and has no sampling error.
RANDOMIZED_SHARE = 0.25
# Rows of Δ − B·A formed at a time when measuring the error, to bound that temporary.
ERROR_CHUNK_ROWS = 4096


@dataclass(frozen=True)
class Rank:
    """How a tensor's rank is chosen: at most ``max_rank`` (None: no cap), singular values below
    ``sv_epsilon`` dropped, and the fewest that keep ``energy`` of Σσ² (None: no energy rule)."""

    max_rank: int | None
    sv_epsilon: float = 0.0
    energy: float | None = None


@dataclass(frozen=True)
class LowRank:
    """``b @ a`` approximates Δ; ``kept_energy`` = Σ_{i<r} σ_i² / ‖Δ‖²; ``rel_error`` =
    ‖Δ − b·a‖ / ‖Δ‖ with the factors as stored (after rounding to their dtype)."""

    a: torch.Tensor  # (r, in)
    b: torch.Tensor  # (out, r)
    kept_energy: float
    rel_error: float

    @property
    def rank(self) -> int:
        return self.a.shape[0]


def seed_for(name: str) -> int:
    """A stable per-tensor seed (CRC-32 of the name: the same on every run and machine)."""
    return zlib.crc32(name.encode("utf-8"))


def _randomized(delta: torch.Tensor, columns: int, generator: torch.Generator):
    """Halko et al. 2011, Algorithm 4.4 then 5.1: Δ ≈ Q·Qᵀ·Δ, and the SVD of the small Qᵀ·Δ."""
    omega = torch.randn(delta.shape[1], columns, generator=generator, dtype=delta.dtype).to(delta.device)
    q = torch.linalg.qr(delta @ omega).Q
    for _ in range(POWER_ITERATIONS):  # QR between products keeps small singular directions
        q = torch.linalg.qr(delta.T @ q).Q
        q = torch.linalg.qr(delta @ q).Q
    u_small, s, vh = torch.linalg.svd(q.T @ delta, full_matrices=False)
    return q @ u_small, s, vh


def spectrum(delta: torch.Tensor, rule: Rank, name: str):
    """(U, σ, Vᵀ) of Δ: all of it exactly, or its leading part from the randomized sketch."""
    smallest = min(delta.shape)
    columns = None if rule.max_rank is None else rule.max_rank + OVERSAMPLE
    if columns is None or rule.energy is not None or columns > RANDOMIZED_SHARE * smallest:
        return torch.linalg.svd(delta, full_matrices=False)
    generator = torch.Generator().manual_seed(seed_for(name))
    return _randomized(delta, columns, generator)


def choose_rank(s: torch.Tensor, total: float, rule: Rank) -> int:
    """The number of leading singular values ``rule`` keeps (0 when none passes sv_epsilon)."""
    rank = len(s) if rule.max_rank is None else min(rule.max_rank, len(s))
    if rule.sv_epsilon > 0:
        rank = min(rank, int((s > rule.sv_epsilon).sum()))
    if rule.energy is not None and total > 0:
        share = torch.cumsum(s.double().square(), 0) / total
        # The first prefix that reaches the target; rounding may leave the last just below 1.
        needed = int(torch.searchsorted(share, torch.tensor(rule.energy, dtype=share.dtype))) + 1
        rank = min(rank, needed)
    return rank


def _rel_error(delta: torch.Tensor, b: torch.Tensor, a: torch.Tensor, norm: float) -> float:
    """‖Δ − b·a‖ / ‖Δ‖, formed a block of rows at a time (exact, unlike ‖Δ‖² − ‖b·a‖², which
    cancels catastrophically when the error is small)."""
    squares = 0.0
    for start in range(0, delta.shape[0], ERROR_CHUNK_ROWS):
        rows = slice(start, start + ERROR_CHUNK_ROWS)
        squares += float((delta[rows] - b[rows] @ a).double().square().sum())
    return squares**0.5 / norm


def decompose(delta: torch.Tensor, rule: Rank, name: str, dtype: torch.dtype) -> LowRank:
    """Δ (out, in), in float32 or wider, as factors of ``dtype`` (B·A = the kept truncation)."""
    total = float(delta.double().square().sum())
    u, s, vh = spectrum(delta, rule, name)
    rank = choose_rank(s, total, rule)
    root = s[:rank].sqrt()
    b = (u[:, :rank] * root).to(dtype)
    a = (root[:, None] * vh[:rank]).to(dtype)
    kept = float(s[:rank].double().square().sum()) / total if total else 1.0
    error = _rel_error(delta, b.to(delta.dtype), a.to(delta.dtype), total**0.5) if total else 0.0
    return LowRank(a.contiguous(), b.contiguous(), min(kept, 1.0), error)
