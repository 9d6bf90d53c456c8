"""Linear (model soup, arXiv:2203.05482): ``sum_i w_i * x_i / sum_i w_i`` (fp32 accumulation).

Elementwise: one combine over ranges, no statistics.
"""

from __future__ import annotations

from mergesmith._torch import torch
from mergesmith.methods.spec import MethodSpec, Param, Scope
from mergesmith.methods.steps import Combine, fixed


class WeightedSum(Combine):
    def __init__(self, ctx):
        super().__init__(ctx)
        self.acc = torch.float64 if ctx.dtype == torch.float64 else torch.float32
        self.weights = torch.tensor([own.weight for own in ctx.params.per_input], dtype=self.acc)

    def apply(self, start, chunks) -> torch.Tensor:
        out = torch.zeros_like(chunks[0], dtype=self.acc)
        for tensor, weight in zip(chunks, self.weights):
            out.addcmul_(tensor, weight)
        if self.ctx.params.normalize:
            out.div_(self.weights.sum())
        return out.to(chunks[0].dtype)


SPEC = MethodSpec(
    name="linear",
    pretty_name="Linear",
    reference="https://arxiv.org/abs/2203.05482",
    steps=fixed(WeightedSum),
    params=(
        Param("weight", float, Scope.INPUT, doc="coefficient of each model"),
        Param("normalize", bool, default=True, doc="divide by the sum of weights"),
    ),
)
