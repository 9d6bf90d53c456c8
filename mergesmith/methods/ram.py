"""Reinforced Agent Merging (RAM, arXiv:2601.13572): keep unique updates whole, average shared ones.

With base ``b``, deltas ``δ_i = x_i - b``, ``a_i = |δ_i| > ε`` (model i updates the entry) and
``c = Σ_i a_i`` (how many models update it):

    ram:        out = b + Σ_i a_i δ_i · ([c = 1] + [c > 1] / c)
    ramplus_tl: out = b + Σ_i a_i δ_i · ([c = 1] λ_i + [c > 1] / c),
                λ_i = 1 + r · clamp(ρ_i, 0, α),  ρ_i = |a_i ∧ c > 1| / max(|a_i ∧ c = 1|, ε)

ramplus_tl ("tensor-local") boosts a model's unique updates by how much of its update it had
to share, per tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

from mergesmith._torch import torch
from mergesmith.methods.spec import BasePolicy, MethodParams, MethodSpec, Param


@dataclass(frozen=True)
class Overlap:
    """Flattened deltas and which models update each entry."""

    deltas: torch.Tensor    # [models, entries], zero where a model does not update
    active: torch.Tensor    # [models, entries] bool
    count: torch.Tensor     # [1, entries] int: models updating the entry
    shared: torch.Tensor    # [1, entries] bool: count > 1
    unique: torch.Tensor    # [1, entries] bool: count == 1


def overlap(tensors, base_index, epsilon: float) -> Overlap:
    base = tensors[base_index]
    others = [x for i, x in enumerate(tensors) if i != base_index]
    flat = torch.stack([x - base for x in others], dim=0).view(len(others), -1)
    active = flat.abs() > epsilon
    count = active.sum(dim=0, keepdim=True)
    return Overlap(flat * active, active, count, count > 1, count == 1)


def _merge(tensors, base_index, o: Overlap, unique_scale=None) -> torch.Tensor:
    base = tensors[base_index]
    unique = o.deltas * o.unique
    if unique_scale is not None:
        unique = unique * unique_scale.unsqueeze(-1)
    merged = (unique + o.deltas * o.shared / o.count.clamp(min=1)).sum(dim=0, keepdim=True)
    return base + merged.reshape_as(base)


def ram(tensors, base_index, params: MethodParams, generator=None) -> torch.Tensor:
    if len(tensors) == 1:
        return tensors[base_index]
    return _merge(tensors, base_index, overlap(tensors, base_index, params.shared["epsilon"]))


def ramplus_tl(tensors, base_index, params: MethodParams, generator=None) -> torch.Tensor:
    if len(tensors) == 1:
        return tensors[base_index]
    eps, r, alpha = params.shared["epsilon"], params.shared["r"], params.shared["alpha"]
    o = overlap(tensors, base_index, eps)
    shared = (o.active & o.shared).sum(dim=1)
    unique = (o.active & o.unique).sum(dim=1)
    boost = 1 + r * (shared / unique.clamp(min=eps)).clamp(min=0, max=alpha)
    # boost is fp32 (integer counts divided), so mergekit's result is fp32: cast back.
    return _merge(tensors, base_index, o, boost).to(tensors[base_index].dtype)


EPSILON = Param("epsilon", float, default=1e-5, doc="a delta entry above this counts as an update")
URL = "https://arxiv.org/abs/2601.13572"
SPECS = (
    MethodSpec(name="ram", pretty_name="Reinforced Agent Merging", reference=URL, fn=ram,
               params=(EPSILON,), base=BasePolicy.REQUIRED),
    MethodSpec(
        name="ramplus_tl", pretty_name="Reinforced Agent Merging Plus (Tensor-Local)", reference=URL, fn=ramplus_tl,
        params=(
            Param("r", float, default=0.1, doc="strength of the boost of unique updates"),
            Param("alpha", float, default=0.2, doc="largest shared/unique ratio that boosts"),
            EPSILON,
        ),
        base=BasePolicy.REQUIRED,
    ),
)
