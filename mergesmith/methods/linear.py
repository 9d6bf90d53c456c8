"""Linear (model soup, arXiv:2203.05482): ``sum_i w_i * x_i / sum_i w_i`` (fp32 accumulation)."""

from __future__ import annotations

from mergesmith._torch import torch
from mergesmith.methods.spec import MethodParams, MethodSpec, Param, Scope


def linear(tensors, base_index, params: MethodParams, generator=None) -> torch.Tensor:
    first = tensors[0]
    acc_dtype = torch.float64 if first.dtype == torch.float64 else torch.float32
    weights = torch.tensor(params.each("weight", range(len(tensors))), dtype=acc_dtype)
    out = torch.zeros_like(first, dtype=acc_dtype)
    for tensor, weight in zip(tensors, weights):
        out.addcmul_(tensor, weight)
    if params.shared["normalize"]:
        out.div_(weights.sum())
    return out.to(first.dtype)


SPEC = MethodSpec(
    name="linear", pretty_name="Linear", reference="https://arxiv.org/abs/2203.05482", fn=linear,
    params=(
        Param("weight", float, Scope.INPUT, doc="coefficient of each model"),
        Param("normalize", bool, default=True, doc="divide by the sum of weights"),
    ),
    elementwise=True,
)
