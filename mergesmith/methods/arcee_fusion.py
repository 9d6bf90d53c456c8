"""Arcee Fusion (https://arcee.ai): take the other model's value where its update matters most.

With base ``a``, other model ``b`` and softmax over the last dim,

    importance = |b - a| · KL(softmax(b) + ε ‖ softmax(a) + ε),   ε = 1e-8
    threshold  = Q2 + 1.5·(Q3 - Q1)    (quantiles of importance: the sorted value at
                                        index ⌊q·(n - 1)⌋, on a sample of 10⁶ entries
                                        drawn with replacement for larger tensors)
    out        = a + (b - a)·[importance ≥ threshold]

The sample is drawn from the job's generator: tensors over 10⁶ entries depend on ``--seed``.
One whole-tensor step: the softmax runs along rows and the sample is drawn for the whole tensor.
"""

from __future__ import annotations

from mergesmith._torch import torch
from mergesmith.methods.params import Params
from mergesmith.methods.spec import BasePolicy, MethodSpec, OptionalTensors
from mergesmith.methods.steps import WholeTensor, fixed

SOFTMAX_EPS = 1e-8
QUANTILE_SAMPLE = 1_000_000
QUARTILES = (0.25, 0.5, 0.75)


def importance(other: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    p = torch.softmax(other, dim=-1) + SOFTMAX_EPS
    q = torch.softmax(base, dim=-1) + SOFTMAX_EPS
    kl = torch.sum(p * torch.log(p / q), dim=-1, keepdim=True)
    return (other - base).abs() * kl


def quartiles(x: torch.Tensor, generator=None) -> torch.Tensor:
    """Q1, Q2, Q3 as the sorted values at ``⌊q·(n - 1)⌋`` (no interpolation)."""
    flat = x.reshape(-1)
    if flat.numel() > QUANTILE_SAMPLE:
        # Drawn on the CPU generator whatever the device, so a GPU merge samples the same entries.
        flat = flat[torch.randint(flat.numel(), (QUANTILE_SAMPLE,), generator=generator).to(flat.device)]
    ordered = torch.sort(flat).values
    index = (torch.tensor(QUARTILES, device=ordered.device) * (ordered.numel() - 1)).long()
    return ordered[index]


def arcee_fusion(tensors, base_index, params: Params, generator=None) -> torch.Tensor:
    base, other = tensors[base_index], tensors[1 - base_index]
    scores = importance(other, base)
    q1, median, q3 = quartiles(scores, generator)
    mask = (scores >= median + 1.5 * (q3 - q1)).float()
    # mergekit's float mask makes its result fp32 for bf16/fp16 inputs: cast back.
    return (base + (other - base) * mask).to(base.dtype)


SPEC = MethodSpec(
    name="arcee_fusion",
    pretty_name="Arcee Fusion",
    reference="https://arcee.ai",
    steps=fixed(WholeTensor(arcee_fusion)),
    base=BasePolicy.REQUIRED,
    min_inputs=2,
    max_inputs=2,
    random=True,
    optional_tensors=OptionalTensors.SINGLETON,
)
