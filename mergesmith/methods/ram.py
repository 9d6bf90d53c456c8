"""Reinforced Agent Merging (RAM, arXiv:2601.13572): keep unique updates whole, average shared ones.

With base ``b``, deltas ``δ_i = x_i - b``, ``a_i = |δ_i| > ε`` (model i updates the entry) and
``c = Σ_i a_i`` (how many models update it):

    ram:        out = b + Σ_i a_i δ_i · ([c = 1] + [c > 1] / c)
    ramplus_tl: out = b + Σ_i a_i δ_i · ([c = 1] λ_i + [c > 1] / c),
                λ_i = 1 + r · clamp(ρ_i, 0, α),  ρ_i = |a_i ∧ c > 1| / max(|a_i ∧ c = 1|, ε)

ramplus_tl ("tensor-local") boosts a model's unique updates by how much of its update it had
to share, per tensor. Every entry is merged on its own, so both combine over ranges; ramplus_tl
first counts each model's shared and unique updates in a pass.
"""

from __future__ import annotations

from dataclasses import dataclass

from mergesmith._torch import torch
from mergesmith.methods.spec import BasePolicy, MethodSpec, Param
from mergesmith.methods.steps import Combine, Pass, fixed


@dataclass(frozen=True)
class Overlap:
    """Flattened deltas and which models update each entry."""

    deltas: torch.Tensor  # [models, entries], zero where a model does not update
    active: torch.Tensor  # [models, entries] bool
    count: torch.Tensor  # [1, entries] int: models updating the entry
    shared: torch.Tensor  # [1, entries] bool: count > 1
    unique: torch.Tensor  # [1, entries] bool: count == 1


def overlap(tensors, base_index, epsilon: float) -> Overlap:
    base = tensors[base_index]
    others = [x for i, x in enumerate(tensors) if i != base_index]
    flat = torch.stack([x - base for x in others], dim=0).view(len(others), -1)
    active = flat.abs() > epsilon
    count = active.sum(dim=0, keepdim=True)
    return Overlap(flat * active, active, count, count > 1, count == 1)


def _merge(base: torch.Tensor, o: Overlap, unique_scale=None) -> torch.Tensor:
    unique = o.deltas * o.unique
    if unique_scale is not None:
        unique = unique * unique_scale.unsqueeze(-1)
    merged = (unique + o.deltas * o.shared / o.count.clamp(min=1)).sum(dim=0, keepdim=True)
    return base + merged.reshape_as(base)


class Ram(Combine):
    """Every entry on its own: one combine over ranges."""

    def apply(self, start, chunks) -> torch.Tensor:
        base = chunks[self.ctx.base_index]
        if len(chunks) == 1:
            return base
        return _merge(base, overlap(chunks, self.ctx.base_index, self.ctx.params.epsilon))


class Boost(Pass):
    """ramplus_tl's ``λ_i``, from each model's counts of shared and unique updates (exact integer sums)."""

    name = "boost"

    def __init__(self, ctx):
        super().__init__(ctx)
        self.shared = self.unique = 0

    def add(self, start, chunks):
        if len(chunks) > 1:
            o = overlap(chunks, self.ctx.base_index, self.ctx.params.epsilon)
            self.shared = self.shared + (o.active & o.shared).sum(dim=1)
            self.unique = self.unique + (o.active & o.unique).sum(dim=1)

    def result(self) -> torch.Tensor | None:
        if len(self.ctx.params.per_input) == 1:
            return None
        p = self.ctx.params
        return 1 + p.r * (self.shared / self.unique.clamp(min=p.epsilon)).clamp(min=0, max=p.alpha)


class BoostedRam(Combine):
    def apply(self, start, chunks) -> torch.Tensor:
        base = chunks[self.ctx.base_index]
        if len(chunks) == 1:
            return base
        o = overlap(chunks, self.ctx.base_index, self.ctx.params.epsilon)
        # boost is fp32 (integer counts divided), so mergekit's result is fp32: cast back.
        return _merge(base, o, self.ctx.stats["boost"]).to(base.dtype)


EPSILON = Param("epsilon", float, default=1e-5, doc="a delta entry above this counts as an update")
URL = "https://arxiv.org/abs/2601.13572"
SPECS = (
    MethodSpec(
        name="ram",
        pretty_name="Reinforced Agent Merging",
        reference=URL,
        steps=fixed(Ram),
        params=(EPSILON,),
        base=BasePolicy.REQUIRED,
    ),
    MethodSpec(
        name="ramplus_tl",
        pretty_name="Reinforced Agent Merging Plus (Tensor-Local)",
        reference=URL,
        steps=fixed(Boost, BoostedRam),
        params=(
            Param("r", float, default=0.1, doc="strength of the boost of unique updates"),
            Param("alpha", float, default=0.2, doc="largest shared/unique ratio that boosts"),
            EPSILON,
        ),
        base=BasePolicy.REQUIRED,
    ),
)
