"""Task arithmetic and its sparsified, sign-consensus variants.

With base ``b``, models ``x_i``, deltas ``δ_i = sparsify(x_i - b)`` and weights ``w_i``:

    out = b + λ · Σ_i m_i w_i δ_i / D,   D = Σ_i m_i w_i if normalize else 1

where ``m_i`` is the TIES sign-agreement mask (all ones without consensus).
- task_arithmetic (arXiv:2212.04089): no sparsifier, no consensus.
- ties (arXiv:2306.01708): magnitude sparsifier + sign consensus.
- dare_linear / dare_ties (arXiv:2311.03099): random sparsifier (+ consensus for ties).
Arithmetic happens in the compute dtype, as in mergekit.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Optional

import torch

from mergesmith.methods import sparsify
from mergesmith.methods.consensus import sign_agreement
from mergesmith.methods.spec import BasePolicy, MethodParams, MethodSpec, Param, Scope

Sparsifier = Callable[..., torch.Tensor]


def task_vectors(tensors, base_index, params: MethodParams, sparsifier: Optional[Sparsifier], generator) -> torch.Tensor:
    """Stacked (sparsified) deltas of every non-base model against the base."""
    base = tensors[base_index]
    others = [i for i in range(len(tensors)) if i != base_index]
    deltas = base.new_empty((len(others), *base.shape))
    for row, i in enumerate(others):
        delta = tensors[i] - base
        if sparsifier is not None:
            delta = sparsifier(delta, params.per_input[i]["density"], params.shared["rescale"], generator)
        deltas[row] = delta
    return deltas


def generalized_task_arithmetic(
    tensors, base_index, params: MethodParams, generator=None, *,
    sparsifier: Optional[Sparsifier], consensus: Optional[str],
) -> torch.Tensor:
    base = tensors[base_index]
    others = [i for i in range(len(tensors)) if i != base_index]
    if not others:
        return base
    deltas = task_vectors(tensors, base_index, params, sparsifier, generator)
    weights = torch.tensor(params.each("weight", others), dtype=deltas.dtype, device=deltas.device)
    weights = weights.reshape((-1,) + (1,) * base.dim())
    deltas.mul_(weights)
    if consensus is not None:
        mask = sign_agreement(deltas, consensus)
        mixed = (deltas * mask).sum(dim=0)
        divisor = (weights * mask).sum(dim=0)
        divisor[divisor == 0] = 1
    else:
        mixed = deltas.sum(dim=0)
        divisor = weights.sum(dim=0)
        divisor[divisor.abs() < 1e-8] = 1
    if params.shared["normalize"]:
        mixed /= divisor
    if params.shared["lambda"] != 1:
        mixed *= params.shared["lambda"]
    return (base + mixed).to(base.dtype)


def _params(normalize: bool, rescale: bool) -> tuple[Param, ...]:
    return (
        Param("int8_mask", bool, default=False, doc="store the sign mask as int8 (no numeric effect)"),
        Param("normalize", bool, default=normalize, doc="divide by the sum of (agreeing) weights"),
        Param("rescale", bool, default=rescale, doc="rescale kept delta entries to the delta's L1 norm"),
        Param("lambda", float, default=1.0, doc="scale of the merged task vector"),
        Param("weight", float, Scope.NON_BASE, doc="coefficient of each model's task vector"),
        Param("density", float, Scope.NON_BASE, default=1.0, doc="fraction of each delta kept"),
    )


def _spec(name, pretty, url, sparsifier, consensus, normalize, rescale) -> MethodSpec:
    return MethodSpec(
        name=name, pretty_name=pretty, reference=url,
        fn=partial(generalized_task_arithmetic, sparsifier=sparsifier, consensus=consensus),
        params=_params(normalize, rescale), base=BasePolicy.REQUIRED,
        random=sparsifier is sparsify.random,
    )


SPECS = (
    _spec("task_arithmetic", "Task Arithmetic", "https://arxiv.org/abs/2212.04089", None, None, False, False),
    _spec("ties", "TIES", "https://arxiv.org/abs/2306.01708", sparsify.magnitude, "sum", True, False),
    _spec("dare_ties", "DARE TIES", "https://arxiv.org/abs/2311.03099", sparsify.random, "sum", False, True),
    _spec("dare_linear", "Linear DARE", "https://arxiv.org/abs/2311.03099", sparsify.random, None, False, True),
)
