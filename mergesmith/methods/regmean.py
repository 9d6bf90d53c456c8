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
The arithmetic is float64 whatever the compute dtype: one Cholesky solve per tensor (``[in, in]``
matrices), the result returned in the compute dtype. An input feature that no model ever
activated (a zero row of Σ G̃_i) takes the weighted average of the models' columns there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from mergesmith._torch import torch
from mergesmith.methods.spec import UNIT, BasePolicy, Interval, MethodSpec, Param, Scope
from mergesmith.methods.steps import Combine, fixed

F64 = torch.float64


def regularized(gram: torch.Tensor, alpha: float) -> torch.Tensor:
    """``α·G + (1 − α)·diag(G)`` in float64 (a new tensor)."""
    out = gram.to(F64) * alpha
    out.diagonal().add_(gram.diagonal().to(F64), alpha=1.0 - alpha)
    return out


def solve_psd(matrix: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """``matrix⁻¹ rhs`` for a symmetric positive semi-definite ``matrix``: Cholesky where it is
    definite, else the least-squares minimum-norm solution (a singular sum of Grams)."""
    factor, info = torch.linalg.cholesky_ex(matrix)
    if int(info) == 0:
        return torch.cholesky_solve(rhs, factor)
    return torch.linalg.lstsq(matrix, rhs, driver="gelsd" if matrix.device.type == "cpu" else None).solution


def regmean(
    weights: Sequence[torch.Tensor], grams: Sequence[torch.Tensor], scales: Sequence[float], alpha: float
) -> torch.Tensor:
    """``(Σ s_i G̃_i)⁻¹ Σ s_i G̃_i W_iᵀ``, transposed back to ``[out, in]``, in float64."""
    total = None
    rhs = None
    for weight, gram, scale in zip(weights, grams, scales):
        g = regularized(gram, alpha).mul_(scale)
        term = g @ weight.to(F64).T
        total = g if total is None else total.add_(g)
        rhs = term if rhs is None else rhs.add_(term)
    # Features no model activated: zero rows and columns of the sum; the solve there is the average.
    dead = total.diagonal() == 0
    if bool(dead.any()):
        mean = sum(w.to(F64).T[dead] * s for w, s in zip(weights, scales)) / sum(scales)
        total.diagonal()[dead] = 1.0
        rhs[dead] = mean
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
        if base is None:
            merged = regmean([chunks[i] for i in others], grams, scales, self.ctx.params.alpha)
        else:
            reference = chunks[base].to(F64)
            deltas = [chunks[i].to(F64) - reference for i in others]
            merged = regmean(deltas, grams, scales, self.ctx.params.alpha).add_(reference)
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
