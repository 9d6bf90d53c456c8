"""Statistics of one tensor across several models, accumulated chunk by chunk (flat memory).

With tensors ``W_i`` of the models and, when given, ``B`` of the base (deltas ``D_i = W_i - B``;
without a base ``D_i`` stands for ``W_i``), summed over every entry of the tensor:

    cosine[i][j]          D_i . D_j / (|D_i| |D_j|)                     None when a norm is 0
    rel_l2[i][j]          |W_i - W_j| / ((|W_i| + |W_j|) / 2)           symmetric, 0 on the diagonal
    delta_norm[i]         |D_i| / |B|                                   with a base
    sign_agreement[i][j]  #{sign D_i = sign D_j} / #{D_i != 0 and D_j != 0}
                          over entries where both deltas are non-zero (the entries TIES' sign
                          election decides on); None when there are none; with a base
    topk_energy[i]        sum_{r<=k} s_r(D_i)^2 / |D_i|^2               s_r: singular values of
                          D_i as a matrix (rows = first axis); None for vectors; with a base

The arithmetic runs in float32 on ``device``; sums across chunks are kept in float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mergesmith._torch import torch

# Elements per model and step. Sign counts are float32 sums of 0/+-1 products, exact while a sum
# stays below 2**24 entries; a chunk of 2**21 keeps them exact with room to spare.
CHUNK = 1 << 21
# Singular values are computed exactly when the smaller side of the matrix is at most this;
# above it, torch.svd_lowrank estimates them (see topk_energy). LAPACK's full SVD of a 256 x 2048
# matrix took longer than the sketch of a 5632 x 2048 one.
EXACT_MAX = 64
OVERSAMPLE = 8  # extra columns of the random sketch beyond k (Halko et al. 2011 suggest 5-10)
# Power iterations of the sketch. One is within 0.3% of the exact share on a power-law spectrum
# (tested), and each further one costs two more passes over the matrix: a third of the run time.
NITER = 1
SKETCH_SEED = 0  # the sketch is drawn from a fixed seed, so a run repeats bit for bit


class Scratch:
    """Float32 buffers reused from tensor to tensor, by slot name. On Linux a fresh large buffer
    costs a page fault per 4 kB (a 46 MB delta: longer than the arithmetic on it), so the caller
    keeps one Scratch for a whole inspection and passes it in."""

    def __init__(self, device: str = "cpu"):
        self.device = device
        self._buffers: dict[str, torch.Tensor] = {}

    def take(self, slot: str, *shape: int) -> torch.Tensor:
        numel = math.prod(shape)
        buffer = self._buffers.get(slot)
        if buffer is None or buffer.numel() < numel:
            buffer = self._buffers[slot] = torch.empty(numel, dtype=torch.float32, device=self.device)
        return buffer[:numel].view(*shape)


@dataclass(frozen=True)
class Sums:
    """Sums over every entry of one tensor, for ``n`` models (float64, on the CPU)."""

    gram: torch.Tensor  # n x n: D_i . D_j
    diff_sq: torch.Tensor  # n x n: |W_i - W_j|^2
    weight_sq: torch.Tensor  # n: |W_i|^2
    base_sq: float  # |B|^2 (0 without a base)
    both: torch.Tensor  # n x n: entries where D_i and D_j are both non-zero (pairs only)
    agree: torch.Tensor  # n x n: of those, entries of equal sign (pairs only)


def _square_norm(x: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(x)) ** 2


class _Totals:
    """Running float64 sums of one tensor; every per-chunk step writes into reused buffers only."""

    def __init__(self, n: int):
        zeros = lambda *shape: torch.zeros(shape, dtype=torch.float64)
        self.gram, self.diff_sq, self.weight_sq = zeros(n, n), zeros(n, n), zeros(n)
        self.both, self.agree, self.base_sq = zeros(n, n), zeros(n, n), 0.0

    def add_pairs(self, rows: torch.Tensor, scratch: torch.Tensor) -> None:
        """Dot products and distances of every pair of ``rows`` (the deltas, or the weights
        without a base). ``|W_i - W_j|`` is taken from the difference itself: near-equal models
        would lose every digit to cancellation in ``|W_i|^2 + |W_j|^2 - 2 W_i . W_j``."""
        n = rows.shape[0]
        for i in range(n):
            self.gram[i, i] += _square_norm(rows[i])
            for j in range(i + 1, n):
                self.gram[i, j] += float(torch.dot(rows[i], rows[j]))
                self.diff_sq[i, j] += _square_norm(torch.sub(rows[i], rows[j], out=scratch))

    def add_signs(self, deltas: torch.Tensor, scratch: torch.Tensor) -> None:
        """Per pair: entries where both deltas are non-zero, and of those the ones of equal sign
        (a sum of sign products is agreements minus disagreements; exact in float32 for a chunk)."""
        signs = deltas.sign_()
        for i in range(signs.shape[0]):
            for j in range(i + 1, signs.shape[0]):
                products = torch.mul(signs[i], signs[j], out=scratch)
                both = float(torch.count_nonzero(products))
                self.both[i, j] += both
                self.agree[i, j] += (both + float(products.sum())) / 2

    def sums(self) -> Sums:
        for m in (self.gram, self.diff_sq, self.both, self.agree):  # the pair loops fill the upper half
            upper = m.triu(1)
            m.copy_(m.triu() + upper.T)
        return Sums(self.gram, self.diff_sq, self.weight_sq, self.base_sq, self.both, self.agree)


def _load(rows: torch.Tensor, tensors, start: int, stop: int) -> torch.Tensor:
    """Elements [start, stop) of each flattened tensor, converted into the float32 ``rows``."""
    for row, tensor in zip(rows, tensors):
        row.copy_(tensor.reshape(-1)[start:stop])
    return rows


def accumulate(tensors, base: torch.Tensor | None, *, scratch: Scratch | None = None, chunk: int = CHUNK) -> Sums:
    """One pass over ``tensors`` (one per model, equal numel) and ``base``, ``chunk`` entries at a time."""
    scratch = scratch or Scratch()
    n, numel = len(tensors), tensors[0].numel()
    totals = _Totals(n)
    for start in range(0, numel, chunk):
        stop = min(numel, start + chunk)
        rows = _load(scratch.take("rows", n, stop - start), tensors, start, stop)
        spare = scratch.take("spare", stop - start)
        if n > 1:  # weight norms serve the pairs' relative distances only
            totals.weight_sq += torch.linalg.vector_norm(rows, dim=1).double().square().cpu()
        if base is not None:
            b = _load(scratch.take("base", 1, stop - start), [base], start, stop)[0]
            totals.base_sq += _square_norm(b)
            rows.sub_(b)  # the deltas, in place: the weights are not needed any more
        totals.add_pairs(rows, spare)
        if base is not None and n > 1:
            totals.add_signs(rows, spare)
    return totals.sums()


def build_delta(tensor: torch.Tensor, base: torch.Tensor, scratch: Scratch, chunk: int = CHUNK) -> torch.Tensor:
    """``tensor - base`` in float32, whole (an SVD needs it), in the scratch slot ``delta``; built a
    chunk at a time because torch casts the whole bf16 operand of a mixed-dtype subtraction first
    (another 262 MB for a 1.1B model's embeddings)."""
    delta = scratch.take("delta", *tensor.shape)
    flat, source, under = delta.view(-1), tensor.reshape(-1), base.reshape(-1)
    for start in range(0, flat.numel(), chunk):
        stop = min(flat.numel(), start + chunk)
        flat[start:stop].copy_(source[start:stop]).sub_(scratch.take("base", stop - start).copy_(under[start:stop]))
    return delta


def _ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


def cosine(sums: Sums) -> list[list[float | None]]:
    norms = sums.gram.diagonal().clamp_min(0).sqrt().tolist()
    g = sums.gram.tolist()
    out = [[_clip(_ratio(g[i][j], norms[i] * norms[j])) for j in range(len(norms))] for i in range(len(norms))]
    for i, row in enumerate(out):  # exactly 1, not 1 - 1 ulp from rounding the square root
        row[i] = None if row[i] is None else 1.0
    return out


def _clip(value: float | None) -> float | None:
    """Rounding can carry a cosine a hair past +-1; the quantity itself cannot."""
    return None if value is None else max(-1.0, min(1.0, value))


def rel_l2(sums: Sums) -> list[list[float]]:
    norms = sums.weight_sq.sqrt().tolist()
    d = sums.diff_sq.sqrt().tolist()
    n = len(norms)
    return [[(_ratio(d[i][j], (norms[i] + norms[j]) / 2) or 0.0) for j in range(n)] for i in range(n)]


def delta_norm(sums: Sums) -> list[float | None]:
    base = sums.base_sq**0.5
    return [_ratio(float(v) ** 0.5, base) if base > 0 else None for v in sums.gram.diagonal().clamp_min(0)]


def sign_agreement(sums: Sums) -> list[list[float | None]]:
    """Pairs from the counts; a delta agrees with itself wherever it is non-zero (1), and a zero
    delta has no entry to agree on (None)."""
    a, b, g = sums.agree.tolist(), sums.both.tolist(), sums.gram.diagonal().tolist()
    n = len(a)
    return [[(1.0 if g[i] > 0 else None) if i == j else _ratio(a[i][j], b[i][j]) for j in range(n)] for i in range(n)]


def topk_energy(delta: torch.Tensor, k: int, *, exact_max: int = EXACT_MAX) -> float | None:
    """Share of ``|delta|^2`` in its ``k`` largest singular directions; None for a vector or zeros.

    Exact (``torch.linalg.svdvals``) when the smaller side is at most ``exact_max``; otherwise
    ``torch.svd_lowrank`` with ``k + OVERSAMPLE`` columns and ``NITER`` power iterations, from a
    fixed seed. Its singular values are those of the delta projected on the sketched subspace,
    never above the true ones, so the estimate is a lower bound: exact for a delta of rank at most
    ``k + OVERSAMPLE`` (LoRA), within 0.3% on a power-law spectrum (fine-tunes), and about a
    quarter low on a flat one (pure noise: 26% on the 1.1B bench's), where the share is small anyway.
    """
    if delta.dim() < 2:
        return None
    matrix = delta.reshape(delta.shape[0], -1).float()
    total = float(torch.linalg.vector_norm(matrix)) ** 2
    if total == 0:
        return None
    if min(matrix.shape) <= exact_max:
        top = torch.linalg.svdvals(matrix)[:k]
    else:
        devices = [matrix.device.index or 0] if matrix.is_cuda else []
        with torch.random.fork_rng(devices=devices):  # seeded, without touching the caller's RNG
            torch.manual_seed(SKETCH_SEED)
            _, top, _ = torch.svd_lowrank(matrix, q=min(k + OVERSAMPLE, *matrix.shape), niter=NITER)
        top = top[:k]
    return min(1.0, float(top.double().square().sum()) / total)
