"""Passthrough: copy one model's tensor, optionally times ``scale`` (frankenmerges)."""

from __future__ import annotations

from typing import Optional

from mergesmith._torch import torch
from mergesmith.methods.spec import MethodSpec, Param, Scope
from mergesmith.methods.steps import Combine, fixed


class Copy(Combine):
    def apply(self, start, chunks) -> torch.Tensor:
        scale = self.ctx.params.per_input[0].scale
        return chunks[0] if scale is None else chunks[0] * scale


SPEC = MethodSpec(
    name="passthrough",
    pretty_name="Passthrough",
    reference="",
    steps=fixed(Copy),
    params=(Param("scale", Optional[float], Scope.INPUT, default=None, doc="multiply the tensor"),),
    max_inputs=1,
)
