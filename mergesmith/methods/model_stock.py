"""Model Stock (arXiv:2403.19522): interpolate the fine-tunes' average toward the base.

With base ``w_0``, ``k`` fine-tunes ``w_i``, offsets ``δ_i = w_i - w_0`` and ``cos θ`` the mean
pairwise cosine between offsets:

    t = k·cos θ / (1 + (k - 1)·cos θ),   out = t·mean_i(w_i) + (1 - t)·w_0

over the whole tensor, or per output row with ``filter_wise`` (1-D tensors are one row).
Where ``1 + (k - 1)·cos θ ≈ 0`` there is no finite estimate: ``t = 0`` keeps the base.
"""

from __future__ import annotations

from mergesmith._torch import torch
from mergesmith.methods.spec import (
    BasePolicy,
    MethodParams,
    MethodSpec,
    OptionalTensors,
    Param,
)

COS_EPS = 1e-6      # floor of the norm product in a cosine
SINGULAR = 1e-6     # |denominator| below this keeps the base


def mean_pairwise_cosine(offsets: list[torch.Tensor]) -> torch.Tensor:
    """Mean over pairs ``i < j`` of the cosine along the last dim, clamped to [-1, 1]."""
    cosines = []
    for i, a in enumerate(offsets):
        for b in offsets[i + 1 :]:
            norms = torch.linalg.vector_norm(a, dim=-1) * torch.linalg.vector_norm(b, dim=-1)
            cosines.append(((a * b).sum(dim=-1) / norms.clamp(min=COS_EPS)).clamp(-1, 1))
    return torch.stack(cosines).mean(dim=0)


def model_stock(tensors, base_index, params: MethodParams, generator=None) -> torch.Tensor:
    base = tensors[base_index]
    if params.shared["filter_wise"]:
        view = (lambda x: x.unsqueeze(0)) if base.dim() == 1 else (lambda x: x)
    else:
        view = lambda x: x.reshape(-1)
    w0 = view(base)
    ws = [view(x) for i, x in enumerate(tensors) if i != base_index]
    cos = mean_pairwise_cosine([w - w0 for w in ws]).unsqueeze(-1)
    k = len(ws)
    denominator = 1 + (k - 1) * cos
    singular = denominator.abs() < SINGULAR
    t = torch.where(singular, torch.zeros_like(cos), (k * cos) / torch.where(singular, 1, denominator))
    average = sum(ws) / k   # one rounding per addition, as mergekit
    return (t * average + (1 - t) * w0).reshape(base.shape)


SPEC = MethodSpec(
    name="model_stock", pretty_name="Model Stock", reference="https://arxiv.org/abs/2403.19522", fn=model_stock,
    params=(Param("filter_wise", bool, default=False, doc="one t per output row instead of per tensor"),),
    base=BasePolicy.REQUIRED, min_inputs=3, optional_tensors=OptionalTensors.BASE_OR_SKIP,
)
