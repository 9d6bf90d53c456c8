"""NearSwap (https://huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001): take the other
model's value where it is near the base's.

    w = clamp(t / max(|a - b|, 1e-6), 0, 1),   out = w·b + (1 - w)·a

with ``a`` the base and ``b`` the other model: entries closer than ``t`` are swapped in
whole, farther ones are pulled toward ``b`` by ``t / |a - b|``. Elementwise: one combine over ranges.
"""

from __future__ import annotations

from mergesmith._torch import torch
from mergesmith.methods.spec import BasePolicy, MethodSpec, OptionalTensors, Param
from mergesmith.methods.steps import Combine, fixed

DIFF_FLOOR = 1e-6


class Swap(Combine):
    def apply(self, start, chunks) -> torch.Tensor:
        a, b = chunks[self.ctx.base_index], chunks[1 - self.ctx.base_index]
        weight = (self.ctx.params.t / torch.abs(a - b).clamp(min=DIFF_FLOOR)).clamp(min=0, max=1)
        return weight * b + (1 - weight) * a


SPEC = MethodSpec(
    name="nearswap",
    pretty_name="NearSwap",
    reference="https://huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001",
    steps=fixed(Swap),
    params=(Param("t", float, doc="distance within which the other model's value is taken"),),
    base=BasePolicy.REQUIRED,
    min_inputs=2,
    max_inputs=2,
    optional_tensors=OptionalTensors.BASE_SINGLETON,
)
