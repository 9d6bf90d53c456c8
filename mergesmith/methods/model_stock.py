"""Model Stock (arXiv:2403.19522): interpolate the fine-tunes' average toward the base.

With base ``w_0``, ``k`` fine-tunes ``w_i``, offsets ``δ_i = w_i - w_0`` and ``cos θ`` the mean
pairwise cosine between offsets:

    t = k·cos θ / (1 + (k - 1)·cos θ),   out = t·mean_i(w_i) + (1 - t)·w_0

over the whole tensor, or per output row with ``filter_wise`` (1-D tensors are one row).
Where ``1 + (k - 1)·cos θ ≈ 0`` there is no finite estimate: ``t = 0`` keeps the base.
Steps: ``t`` from the whole tensor, then the interpolation over ranges.
"""

from __future__ import annotations

from mergesmith._torch import torch
from mergesmith.methods.spec import BasePolicy, MethodSpec, OptionalTensors, Param
from mergesmith.methods.steps import Combine, Pass, fixed

COS_EPS = 1e-6  # floor of the norm product in a cosine
SINGULAR = 1e-6  # |denominator| below this keeps the base


def mean_pairwise_cosine(offsets: list[torch.Tensor]) -> torch.Tensor:
    """Mean over pairs ``i < j`` of the cosine along the last dim, clamped to [-1, 1]."""
    cosines = []
    for i, a in enumerate(offsets):
        for b in offsets[i + 1 :]:
            norms = torch.linalg.vector_norm(a, dim=-1) * torch.linalg.vector_norm(b, dim=-1)
            cosines.append(((a * b).sum(dim=-1) / norms.clamp(min=COS_EPS)).clamp(-1, 1))
    return torch.stack(cosines).mean(dim=0)


class Ratio(Pass):
    """``t`` from the mean pairwise cosine of the offsets, for the tensor or per row: one range,
    the inputs whole (the norms and dot products are torch's over the whole tensor or row)."""

    name = "t"
    whole = True

    def add(self, start, chunks):
        base = chunks[self.ctx.base_index]
        if self.ctx.params.filter_wise:
            view = (lambda x: x.unsqueeze(0)) if base.dim() == 1 else (lambda x: x)
        else:
            view = lambda x: x.reshape(-1)
        w0 = view(base)
        cos = mean_pairwise_cosine([view(chunks[i]) - w0 for i in self.ctx.others]).unsqueeze(-1)
        k = len(self.ctx.others)
        denominator = 1 + (k - 1) * cos
        singular = denominator.abs() < SINGULAR
        self.t = torch.where(singular, torch.zeros_like(cos), (k * cos) / torch.where(singular, 1, denominator))

    def result(self) -> torch.Tensor:
        return self.t  # [1], or [rows, 1] with filter_wise


class Interpolate(Combine):
    """``t·mean_i(w_i) + (1 - t)·w_0`` over ranges (each element takes its row's ``t``)."""

    def apply(self, start, chunks) -> torch.Tensor:
        t = self.ctx.stats["t"].reshape(-1)
        if t.numel() > 1:
            row = torch.arange(start, start + chunks[0].numel(), device=t.device) // (self.ctx.n // t.numel())
            t = t[row]
        ws = [chunks[i] for i in self.ctx.others]
        average = sum(ws) / len(ws)  # one rounding per addition, as mergekit
        return t * average + (1 - t) * chunks[self.ctx.base_index]


SPEC = MethodSpec(
    name="model_stock",
    pretty_name="Model Stock",
    reference="https://arxiv.org/abs/2403.19522",
    steps=fixed(Ratio, Interpolate),
    params=(Param("filter_wise", bool, default=False, doc="one t per output row instead of per tensor"),),
    base=BasePolicy.REQUIRED,
    min_inputs=3,
    optional_tensors=OptionalTensors.BASE_OR_SKIP,
)
