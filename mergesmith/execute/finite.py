"""No NaN or infinity is ever written: every output range is checked before it goes to the file.

A NaN in an input (a corrupt or diverged checkpoint) spreads through most methods; an output
that overflows its dtype (float32 inputs merged into float16) turns into infinities. Either way
the merge stops with the tensor named, and the input that holds them when one does.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from mergesmith.errors import NonFiniteError
from mergesmith.io.header import ModelInput
from mergesmith.plan.jobs import TensorJob


def all_finite(tensor: torch.Tensor) -> bool:
    """True when no element is NaN or infinite. A sum carries any NaN or infinity through, and
    reads the tensor once without a mask of its size; only a sum that overflows from finite
    values needs the element-wise test."""
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return True
    if tensor.dtype == torch.bfloat16:
        # torch sums bf16 in float32 already; asking for a float32 result would copy the tensor
        # first (a fresh buffer per range: most of a bf16 merge's page faults). A finite sum past
        # bf16's range (nearly float32's) rounds to inf and takes the element-wise test below.
        total = torch.sum(tensor)
    else:
        total = torch.sum(tensor, dtype=torch.float64 if tensor.dtype == torch.float64 else torch.float32)
    return bool(torch.isfinite(total)) or bool(torch.isfinite(tensor).all())


def require_finite(job: TensorJob, models: Mapping[str, ModelInput], tensor: torch.Tensor) -> None:
    if not all_finite(tensor):
        raise NonFiniteError(_culprit(job, models))


def _culprit(job: TensorJob, models: Mapping[str, ModelInput]) -> str:
    for source in job.sources:
        model = models[source.model]
        values = model.reader.get(source.name)
        bad = int((~torch.isfinite(values)).sum()) if values.is_floating_point() else 0
        if bad:
            return (
                f"model '{model.key}' ({model.path}): tensor {source.name} holds {bad} NaN or infinite "
                "values; the checkpoint is corrupt or diverged: re-download it or leave it out"
            )
    return (
        f"output tensor {job.output} ({job.method}) came out with NaN or infinite values from finite inputs "
        f"(computed in {job.dtype}, written as {job.out_dtype}); check the parameters (weights that sum to "
        "zero?) or choose a wider dtype / out_dtype"
    )
