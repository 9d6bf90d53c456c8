"""SCE (FuseChat, arXiv:2408.07990): select, calculate, erase.

With base ``b`` and deltas ``δ_i = x_i - b``:
- select: keep the ``⌊select_topk · nnz(var)⌋`` entries where the deltas' variance across
  models (population variance) is largest, in every delta;
- calculate: model weights ``c_i = mean(δ_i²) / Σ_j mean(δ_j²)`` (uniform when that sum is ~0);
- erase: TIES sign election (``sum``) masks ``m_i``;

    out = b + Σ_i c_i m_i δ_i / max(Σ_i c_i m_i, 1e-6)

One whole-tensor step: the top-k of the variance and the weights' mean squares are taken over
the whole tensor in torch's order.
"""

from __future__ import annotations

from mergesmith._torch import torch
from mergesmith.methods.consensus import sign_agreement
from mergesmith.methods.params import Params
from mergesmith.methods.spec import FRACTION, BasePolicy, MethodSpec, Param
from mergesmith.methods.steps import WholeTensor, fixed

WEIGHT_EPS = 1e-6  # below this the weights' sum counts as zero, and so does the divisor


def variance_mask(deltas: torch.Tensor, fraction: float) -> torch.Tensor:
    """SCE "select": True at the entries of largest variance across models (dim 0)."""
    if fraction <= 0:
        return torch.zeros_like(deltas[0], dtype=torch.bool)
    if fraction >= 1:
        return torch.ones_like(deltas[0], dtype=torch.bool)
    variance = torch.var(deltas, dim=0, unbiased=False)
    k = int(torch.count_nonzero(variance) * fraction)
    mask = torch.zeros_like(variance, dtype=torch.bool)
    if k > 0:
        mask.view(-1)[torch.topk(variance.abs().view(-1), k=k, largest=True).indices] = True
    return mask


def energy_weights(deltas: torch.Tensor) -> torch.Tensor:
    """SCE "calculate": each model's mean squared delta, normalised to sum 1."""
    energy = deltas.square().reshape(deltas.shape[0], -1).mean(dim=1)
    total = torch.sum(energy).item()
    if abs(total) < WEIGHT_EPS:
        return torch.ones_like(energy) / energy.shape[0]
    return energy / total


def sce(tensors, base_index, params: Params, generator=None) -> torch.Tensor:
    base = tensors[base_index]
    others = [x for i, x in enumerate(tensors) if i != base_index]
    if not others:
        return base
    deltas = torch.stack([x - base for x in others], dim=0)
    if params.select_topk < 1:
        deltas = deltas * variance_mask(deltas, params.select_topk).unsqueeze(0)
    weights = energy_weights(deltas).reshape((-1,) + (1,) * base.dim())
    kept = weights * sign_agreement(deltas, "sum")
    return base + (deltas * kept).sum(dim=0) / torch.sum(kept, dim=0).clamp(min=WEIGHT_EPS)


SPEC = MethodSpec(
    name="sce",
    pretty_name="SCE",
    reference="https://arxiv.org/abs/2408.07990",
    steps=fixed(WholeTensor(sce)),
    params=(
        Param("int8_mask", bool, default=False, doc="store the sign mask as int8 (no numeric effect)"),
        Param("select_topk", float, default=1.0, doc="fraction of highest-variance entries kept", domain=FRACTION),
    ),
    base=BasePolicy.REQUIRED,
)
