"""The combine of generalized task arithmetic (task_arithmetic.py), over ranges.

    out = b + λ · Σ_i m_i w_i δ_i / D,   D = Σ_i m_i w_i if normalize else 1

``δ_i`` the deltas, trimmed by the threshold pass's ``(key, cutoff)`` where there is one
(threshold.py), ``m_i`` the TIES sign-agreement mask (consensus.py; all ones without). The C
kernel ``gta`` does a range in one pass where it takes the tensors; torch otherwise, with the
same ops in the same order (``combine_deltas``, which the whole-tensor form shares).
"""

from __future__ import annotations

from mergesmith import native
from mergesmith._torch import torch
from mergesmith.methods import steps
from mergesmith.methods.consensus import sign_agreement
from mergesmith.methods.params import Params
from mergesmith.methods.steps import Combine
from mergesmith.methods.threshold import KEEP_ALL, kept

WEIGHT_EPS = 1e-8  # without consensus, weights summing below this divide by 1


def combine_deltas(
    base: torch.Tensor, deltas: torch.Tensor, weights: torch.Tensor, params: Params, consensus: bool
) -> torch.Tensor:
    """``base`` plus the weighted (sign-elected) mix of ``deltas`` (stacked on dim 0; scaled in place)."""
    weights = weights.reshape((-1,) + (1,) * base.dim())
    deltas.mul_(weights)
    if consensus:
        mask = sign_agreement(deltas, "sum")
        mixed = (deltas * mask).sum(dim=0)
        divisor = (weights * mask).sum(dim=0)
        divisor[divisor == 0] = 1
    else:
        mixed = deltas.sum(dim=0)
        divisor = weights.sum(dim=0)
        divisor[divisor.abs() < WEIGHT_EPS] = 1
    if params.normalize:
        mixed /= divisor
    if params.lambda_ != 1:
        mixed *= params.lambda_
    return (base + mixed).to(base.dtype)


def _shifted(threshold: tuple[int, int], start: int) -> tuple[int, int]:
    """A threshold for the range beginning at ``start``: the tie cutoff is an index."""
    key, cutoff = threshold
    return (key, cutoff - start) if cutoff >= 0 else threshold


class Sum(Combine):
    """Task arithmetic over ranges: base first, then the others."""

    consensus = False

    def __init__(self, ctx):
        super().__init__(ctx)
        others = ctx.others
        self.thresholds = ctx.stats.get("threshold", (KEEP_ALL,) * len(others))
        self.weights = torch.tensor([ctx.params.per_input[i].weight for i in others], dtype=ctx.dtype)
        total = float(self.weights.sum())
        self.divisor = 1.0 if abs(total) < WEIGHT_EPS else total
        self.out = torch.empty(min(ctx.n, steps.RANGE), dtype=ctx.dtype)  # reused: the executor copies each range out

    def reads(self):
        return (self.ctx.base_index, *self.ctx.others)

    def apply(self, start, chunks) -> torch.Tensor:
        base, xs = chunks[0], chunks[1:]
        if not xs:
            return base
        params = self.ctx.params
        if len(xs) <= native.MAX_MODELS and native.available(base, *xs, self.out):
            return native.gta(
                base,
                xs,
                [_shifted(t, start) for t in self.thresholds],
                self.weights,
                self.consensus,
                params.normalize,
                params.lambda_,
                self.divisor,
                self.out,
            )
        deltas = base.new_empty((len(xs), base.numel()))
        for row, (x, threshold) in enumerate(zip(xs, self.thresholds)):
            delta = x - base
            deltas[row] = delta if threshold == KEEP_ALL else delta * kept(delta, threshold, start).to(delta.dtype)
        return combine_deltas(base, deltas, self.weights.to(base.device), params, self.consensus)


class SignConsensus(Sum):
    """TIES: only the deltas that agree with the elected sign count (arXiv:2306.01708, "disjoint merge")."""

    consensus = True
