"""RegMean (Jin et al., ICLR 2023, "Dataless Knowledge Fusion by Merging Weights of Language
Models", arXiv:2212.09849, eq. 2 and §3.3): per linear layer, the weights that best reproduce
every model's outputs on its own inputs,

    W = argmin_W Σ_i ‖X_i Wᵀ − X_i W_iᵀ‖²  →  Wᵀ = (Σ_i w_i G̃_i)⁻¹ Σ_i w_i G̃_i W_iᵀ,
    G̃_i = α·G_i + (1 − α)·diag(G_i),   G_i = X_iᵀ X_i / N_i

in torch's ``y = x @ Wᵀ`` layout (W is [out, in], G_i is [in, in]). ``G_i`` comes from the
calibration stage (mergesmith/calibrate): model ``i`` run on its own calibration text, ``N_i``
tokens (the mean over tokens, as FusionBench takes it: the paper's sum when token counts agree). ``α``
shrinks the off-diagonal of every Gram toward its diagonal (α = 1: the exact least-squares
merge; α = 0: a per-input-feature weighted average). ``w_i`` (per-model ``weight``, default 1)
scales model i's Gram; equal weights give the paper's formula. With a base model the solve runs
on the deltas ``W_i − W_base`` and the base is added back (the same W up to rounding, and better
conditioned for fine-tunes that differ by small updates); the base is then a reference, not a
model being merged, and needs no calibration.

Inputs of a job: the weights in recipe order, then one Gram per non-base model (in the order of
the non-base weights), as the planner lists them (plan/calibration.py). Tensors that feed no
linear layer (norms, embeddings, heads) are planned as the weighted ``linear`` average instead.
The solve is one Cholesky factorisation (of Σ G̃_i scaled to unit diagonal) per tensor and
``n − 1`` Gram products (``regmean``'s identity around the first model). Compute dtype float64
(what the planner gives float32 and float64 outputs): everything in float64. Compute dtype
float32 (16-bit outputs): the factorisation, products and triangular solves in float32 where
``fast_enough`` proves the scaled system well conditioned (α < 1), an error ~1e-5 of the merged
delta on real Grams (the float32 factor adds 0–30% to that of float32 products alone), far below
a 16-bit output's rounding. An input feature that no model ever
activated (a zero row of Σ G̃_i) takes the weighted average of the models' columns there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from mergesmith._torch import torch
from mergesmith.methods.spec import UNIT, BasePolicy, Interval, MethodSpec, Param, Scope
from mergesmith.methods.steps import Combine, fixed

# The float32 path runs only where the condition number of the Jacobi-scaled Σ G̃_i is provably at
# most this (``fast_enough``): float32 rounding (6e-8) times it bounds the error at 6% of the
# correction term in the worst case; measured on real Grams (SmolLM2, α 0.5 and 0.9) it is 1e-5 of
# the merged delta, and the correction is itself a fraction of the weight.
FAST_KAPPA = 2.0**20


def regularized(gram: torch.Tensor, alpha: float, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``α·G + (1 − α)·diag(G)`` in ``dtype`` (float64 by default; a new tensor)."""
    dtype = torch.float64 if dtype is None else dtype
    out = gram.to(dtype) * alpha
    out.diagonal().add_(gram.diagonal().to(dtype), alpha=1.0 - alpha)
    return out


def fast_enough(alpha: float, features: int) -> bool:
    """Whether float32 products and triangular solves may serve. Scaled by its diagonal, Σ G̃_i is
    ``α·C + (1 − α)·I`` with ``C`` positive semi-definite of unit diagonal (Cauchy–Schwarz), so
    its condition number is at most ``1 + α·in/(1 − α)``; α = 1 has no bound."""
    return alpha < 1 and 1 + alpha * features / (1 - alpha) <= FAST_KAPPA


def solve_psd(matrix: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """``matrix⁻¹ rhs`` for a symmetric positive semi-definite ``matrix``: Cholesky where it is
    definite, else the least-squares minimum-norm solution (a singular sum of Grams)."""
    factor, info = torch.linalg.cholesky_ex(matrix)
    if int(info) == 0:
        return torch.cholesky_solve(rhs, factor)
    return torch.linalg.lstsq(matrix, rhs, driver="gelsd" if matrix.device.type == "cpu" else None).solution


def regmean(
    weights: Sequence[torch.Tensor],
    grams: Sequence[torch.Tensor],
    scales: Sequence[float],
    alpha: float,
    fast: bool = False,
) -> torch.Tensor:
    """``(Σ s_i G̃_i)⁻¹ Σ s_i G̃_i W_iᵀ``, transposed back to ``[out, in]``: float64, or float32
    where ``fast`` and ``fast_enough``. With ``M = Σ s_i G̃_i`` the right-hand side is
    ``M W_0ᵀ + Σ_{i>0} s_i G̃_i (W_i − W_0)ᵀ``, so ``Wᵀ = W_0ᵀ + M⁻¹ Σ_{i>0} s_i G̃_i (W_i − W_0)ᵀ``:
    one product fewer, and the rounding of the solve scales with the models' differences. Models
    that agree on this weight (e.g. a projection no LoRA touched) give it back without a solve:
    the correction is zero (also where ``Σ G̃_i`` is singular, whose least-squares solution would
    drop the weight's components outside the Grams' range)."""
    dtype = torch.float32 if fast and fast_enough(alpha, grams[0].shape[0]) else torch.float64
    if all(torch.equal(w, weights[0]) for w in weights[1:]):
        return weights[0].to(dtype, copy=True)
    regs = [regularized(g, alpha, dtype).mul_(s) for g, s in zip(grams, scales)]
    total = regs[0].clone()
    for g in regs[1:]:
        total.add_(g)
    # Features no model activated: zero rows and columns of the sum; the solve there is the average.
    dead = total.diagonal() == 0
    total.diagonal()[dead] = 1.0
    scale = total.diagonal().rsqrt()
    factor = _factor(total.mul_(scale[:, None]).mul_(scale))  # Jacobi-scaled
    if factor is None:
        return _least_squares(weights, grams, scales, alpha, dead)
    first = weights[0].to(dtype)
    diffs = [w.to(dtype) - first for w in weights[1:]]
    step = _correction(regs[1:], diffs, factor.to(dtype), scale) if diffs else torch.zeros_like(first.T)
    if bool(dead.any()):
        mean = sum(w.to(dtype).T[dead] * s for w, s in zip(weights, scales)) / sum(scales)
        step[dead] = mean - first.T[dead]
    return step.T.add_(first)


def _factor(scaled: torch.Tensor) -> torch.Tensor | None:
    """The Cholesky factor of the Jacobi-scaled ``Σ G̃_i`` in its dtype; a float32 factorisation
    that rounding makes fail is redone in float64; None where the sum is singular."""
    factor, info = torch.linalg.cholesky_ex(scaled)
    if int(info) != 0 and scaled.dtype != torch.float64:
        factor, info = torch.linalg.cholesky_ex(scaled.to(torch.float64))
    return factor if int(info) == 0 else None


def _correction(regs, diffs, factor, scale) -> torch.Tensor:
    """``M⁻¹ Σ_i G̃_i Dᵢᵀ`` with ``M = S L Lᵀ S`` (``S = diag(scale)``), the products ordered for
    the fewest flops: the stacked ``M⁻¹ [G̃_1 … G̃_k]`` first when ``k·in < out`` (gate/up), else
    the right-hand side first."""
    features, out = regs[0].shape[0], diffs[0].shape[0]
    if len(regs) * features < out:
        mixed = torch.cholesky_solve(torch.cat(regs, dim=1).mul_(scale[:, None]), factor).mul_(scale[:, None])
        return mixed @ torch.cat([d.T for d in diffs], dim=0)
    rhs = regs[0] @ diffs[0].T
    for g, d in zip(regs[1:], diffs[1:]):
        rhs.addmm_(g, d.T)
    return torch.cholesky_solve(rhs.mul_(scale[:, None]), factor).mul_(scale[:, None])


def _least_squares(weights, grams, scales, alpha, dead) -> torch.Tensor:
    """The minimum-norm solution of the whole problem in float64, for a singular ``Σ G̃_i``."""
    total, rhs = None, None
    for weight, gram, s in zip(weights, grams, scales):
        g = regularized(gram, alpha).mul_(s)
        term = g @ weight.to(torch.float64).T
        total = g if total is None else total.add_(g)
        rhs = term if rhs is None else rhs.add_(term)
    if bool(dead.any()):
        rhs[dead] = sum(w.to(torch.float64).T[dead] * s for w, s in zip(weights, scales)) / sum(scales)
        total.diagonal()[dead] = 1.0
    return solve_psd(total, rhs).T


class Solve(Combine):
    """The regression mean of one linear weight: reads the weights, then the non-base Grams."""

    whole = True

    def reads(self) -> Sequence[int]:
        return range(len(self.ctx.params.per_input) + len(self.ctx.others))

    def apply(self, start, chunks) -> torch.Tensor:
        n, others, base = len(self.ctx.params.per_input), self.ctx.others, self.ctx.base_index
        grams = chunks[n:]
        scales = [self.ctx.params.per_input[i].weight for i in others]
        fast = self.ctx.dtype == torch.float32  # the planner's compute dtype for 16-bit outputs (plan/calibration.py)
        work = torch.float32 if fast else torch.float64
        if base is None:
            merged = regmean([chunks[i] for i in others], grams, scales, self.ctx.params.alpha, fast)
        else:
            reference = chunks[base].to(work)
            deltas = [chunks[i].to(work) - reference for i in others]
            merged = regmean(deltas, grams, scales, self.ctx.params.alpha, fast).add_(reference)
        return merged.to(self.ctx.dtype)


def _check(params, where: str) -> None:
    from mergesmith.errors import ConfigError

    scales = [own.weight for own in params.per_input if "weight" in own]
    if any(s < 0 for s in scales) or sum(scales) <= 0:
        raise ConfigError(
            f"{where}regmean weights {scales} must be >= 0 with a positive sum (each scales a model's Gram matrices)"
        )


SPEC = MethodSpec(
    name="regmean",
    pretty_name="RegMean",
    reference="https://arxiv.org/abs/2212.09849",
    steps=fixed(Solve),
    params=(
        Param(
            "calibration",
            str,
            Scope.MODEL,
            doc="text(s) the model runs on to get its Gram matrices: a file (relative to the recipe), "
            "a list of files, or a bundled text name (kjv_train)",
        ),
        Param(
            "calibration_tokens",
            int,
            Scope.MODEL,
            default=4096,
            doc="tokens of calibration text per model (windows of 256 tokens)",
            domain=Interval(1, math.inf),
        ),
        Param("alpha", float, default=0.9, doc="shrinks each Gram's off-diagonal toward its diagonal", domain=UNIT),
        Param(
            "weight",
            float,
            Scope.NON_BASE,
            default=1.0,
            doc="scales the model's Gram matrices (linear average elsewhere)",
        ),
    ),
    base=BasePolicy.OPTIONAL,
    min_non_base=1,
    check=_check,
    calibrated=True,
)
