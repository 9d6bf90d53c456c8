"""Passthrough: copy one model's tensor, optionally times ``scale`` (frankenmerges)."""

from __future__ import annotations

from typing import Optional

from mergesmith._torch import torch
from mergesmith.methods.spec import MethodParams, MethodSpec, Param, Scope


def passthrough(tensors, base_index, params: MethodParams, generator=None) -> torch.Tensor:
    scale = params.per_input[0]["scale"]
    return tensors[0] if scale is None else tensors[0] * scale


SPEC = MethodSpec(
    name="passthrough", pretty_name="Passthrough", reference="", fn=passthrough,
    params=(Param("scale", Optional[float], Scope.INPUT, default=None, doc="multiply the tensor"),),
    max_inputs=1, elementwise=True,
)
