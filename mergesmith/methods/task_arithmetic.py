"""Task arithmetic and its sparsified, sign-consensus variants.

With base ``b``, models ``x_i``, deltas ``δ_i = sparsify(x_i - b)`` and weights ``w_i``:

    out = b + λ · Σ_i m_i w_i δ_i / D,   D = Σ_i m_i w_i if normalize else 1

where ``m_i`` is the TIES sign-agreement mask (all ones without consensus).
- task_arithmetic (arXiv:2212.04089): no sparsifier, no consensus.
- ties (arXiv:2306.01708): magnitude sparsifier + sign consensus.
- dare_linear / dare_ties (arXiv:2311.03099): random sparsifier (+ consensus for ties).
- breadcrumbs / breadcrumbs_ties (arXiv:2312.06795): outlier sparsifier (+ consensus).
- della_linear / della (arXiv:2406.11617): MagPrune sparsifier (+ consensus).
Arithmetic happens in the compute dtype, as in mergekit.

Steps: without a sparsifier, the combine over ranges (gta.py); with the magnitude sparsifier,
first the threshold pass (threshold.py). The random sparsifiers draw their masks for the whole
shape from the tensor's generator, breadcrumbs sorts the whole delta, and the L1 rescale and
mergekit's tie rule need the whole delta too: those run as one whole-tensor step.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Annotated, Literal

from pydantic import AfterValidator

from mergesmith._torch import torch
from mergesmith.methods import sparsify
from mergesmith.methods.gta import SignConsensus, Sum, combine_deltas
from mergesmith.methods.params import Params
from mergesmith.methods.spec import FRACTION, BasePolicy, MethodSpec, Param, Scope
from mergesmith.methods.steps import WholeTensor
from mergesmith.methods.threshold import MagnitudeThreshold


@dataclass(frozen=True)
class Sparsifier:
    """A sparsify step and the per-model parameters it needs beyond ``density``."""

    fn: Callable[..., torch.Tensor]
    extra: tuple[Param, ...] = ()
    random: bool = False
    # ``check(density, where, **extra)`` raises ConfigError for values the step cannot use.
    check: Callable[..., None] | None = None


def _extra(sparsifier: Sparsifier, own) -> dict:
    return {p.name: own[p.name] for p in sparsifier.extra}


def task_vectors(tensors, base_index, params: Params, sparsifier: Sparsifier | None, generator) -> torch.Tensor:
    """Stacked (sparsified) deltas of every non-base model against the base."""
    base = tensors[base_index]
    others = [i for i in range(len(tensors)) if i != base_index]
    deltas = base.new_empty((len(others), *base.shape))
    for row, i in enumerate(others):
        delta = tensors[i] - base
        if sparsifier is not None:
            own = params.per_input[i]
            delta = sparsifier.fn(delta, own.density, params.rescale, generator, **_extra(sparsifier, own))
        deltas[row] = delta
    return deltas


def generalized_task_arithmetic(
    tensors,
    base_index,
    params: Params,
    generator=None,
    *,
    sparsifier: Sparsifier | None,
    consensus: str | None,
) -> torch.Tensor:
    """The whole-tensor form: sparsify each whole delta, then the same combine as over ranges."""
    base = tensors[base_index]
    others = [i for i in range(len(tensors)) if i != base_index]
    if not others:
        return base
    deltas = task_vectors(tensors, base_index, params, sparsifier, generator)
    weights = torch.tensor([params.per_input[i].weight for i in others], dtype=deltas.dtype, device=deltas.device)
    return combine_deltas(base, deltas, weights, params, consensus is not None)


def _steps(params: Params, *, sparsifier: Sparsifier | None, consensus: str | None):
    """Over ranges where every kept entry is known from a threshold: no sparsifier, or the
    magnitude one with its lowest-index tie rule and no L1 rescale (the rescale's sums and
    mergekit's sort need the whole delta); one whole-tensor step otherwise."""
    combine = Sum if consensus is None else SignConsensus
    if sparsifier is None:
        return (combine,)
    trimmed = [own for own in params.per_input if "density" in own and own.density < 1]
    if (
        sparsifier is MAGNITUDE
        and not (trimmed and params.rescale)
        and all(own.tie_break == "index" for own in trimmed)
    ):
        return (MagnitudeThreshold, combine)
    return (WholeTensor(partial(generalized_task_arithmetic, sparsifier=sparsifier, consensus=consensus)),)


def _negative_gamma(method: str) -> Callable[[float], float]:
    def check(gamma: float) -> float:
        if gamma < 0:
            warnings.warn(
                f"{method}: parameter gamma = {gamma} is negative; mergesmith removes no outliers (as gamma 0), "
                "mergekit keeps fewer than density of the entries (none when -gamma >= density)",
                stacklevel=2,
            )
        return gamma

    return check


def _check_inputs(params: Params, where: str, *, sparsifier: Sparsifier) -> None:
    for own in params.per_input:
        if "density" in own:  # the non-base inputs
            sparsifier.check(own.density, where, **_extra(sparsifier, own))


MAGNITUDE = Sparsifier(
    sparsify.magnitude,
    extra=(
        Param(
            "tie_break",
            Literal["index", "mergekit"],
            Scope.NON_BASE,
            default="index",
            doc="entries tied at the threshold: index keeps the lowest indices (linear time); "
            "mergekit reproduces mergekit's sort (slow, bit-exact)",
        ),
    ),
)
RANDOM = Sparsifier(sparsify.random, random=True)
MAGPRUNE = Sparsifier(
    sparsify.magprune,
    random=True,
    check=sparsify.check_magprune,
    extra=(Param("epsilon", float, Scope.NON_BASE, default=0.15, doc="keep probabilities span density ± epsilon"),),
)


def _outliers(method: str) -> Sparsifier:
    gamma = Param(
        "gamma",
        Annotated[float, AfterValidator(_negative_gamma(method))],
        Scope.NON_BASE,
        default=0.01,
        doc="fraction of largest-magnitude delta entries removed",
    )
    return Sparsifier(sparsify.outliers, extra=(gamma,))


def _params(normalize: bool, rescale: bool, sparsifier: Sparsifier | None) -> tuple[Param, ...]:
    random = sparsifier is not None and sparsifier.random
    return (
        Param("int8_mask", bool, default=False, doc="store the sign mask as int8 (no numeric effect)"),
        Param("normalize", bool, default=normalize, doc="divide by the sum of (agreeing) weights"),
        Param(
            "rescale",
            sparsify.Rescale if random else bool,
            default=rescale,
            doc="rescale kept delta entries: true to the delta's L1 norm"
            + (", paper by 1/keep probability" if random else ""),
        ),
        Param("lambda", float, default=1.0, doc="scale of the merged task vector"),
        Param("weight", float, Scope.NON_BASE, doc="coefficient of each model's task vector"),
        Param("density", float, Scope.NON_BASE, default=1.0, doc="fraction of each delta kept", domain=FRACTION),
        *(sparsifier.extra if sparsifier is not None else ()),
    )


def _spec(name, pretty, url, sparsifier: Sparsifier | None, consensus, normalize, rescale) -> MethodSpec:
    return MethodSpec(
        name=name,
        pretty_name=pretty,
        reference=url,
        steps=partial(_steps, sparsifier=sparsifier, consensus=consensus),
        params=_params(normalize, rescale, sparsifier),
        base=BasePolicy.REQUIRED,
        random=sparsifier is not None and sparsifier.random,
        check=partial(_check_inputs, sparsifier=sparsifier) if sparsifier is not None and sparsifier.check else None,
    )


DARE = "https://arxiv.org/abs/2311.03099"
BREADCRUMBS = "https://arxiv.org/abs/2312.06795"
DELLA = "https://arxiv.org/abs/2406.11617"
SPECS = (
    _spec("task_arithmetic", "Task Arithmetic", "https://arxiv.org/abs/2212.04089", None, None, False, False),
    _spec("ties", "TIES", "https://arxiv.org/abs/2306.01708", MAGNITUDE, "sum", True, False),
    _spec("dare_ties", "DARE TIES", DARE, RANDOM, "sum", False, True),
    _spec("dare_linear", "Linear DARE", DARE, RANDOM, None, False, True),
    _spec("breadcrumbs", "Model Breadcrumbs", BREADCRUMBS, _outliers("breadcrumbs"), None, False, False),
    _spec(
        "breadcrumbs_ties",
        "Model Breadcrumbs with TIES",
        BREADCRUMBS,
        _outliers("breadcrumbs_ties"),
        "sum",
        False,
        False,
    ),
    _spec("della", "DELLA", DELLA, MAGPRUNE, "sum", True, True),
    _spec("della_linear", "Linear DELLA", DELLA, MAGPRUNE, None, False, True),
)
