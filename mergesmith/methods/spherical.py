"""Interpolation on the sphere beyond two-model SLERP (slerp.py).

- nuslerp: SLERP of two models (or of their deltas against a base),
  ``slerp(t; a, b) = (sin((1-t)θ)·a + sin(tθ)·b) / sin θ`` with ``t = w_2 / (w_1 + w_2)``
  and ``cos θ`` taken over the whole tensor (``nuslerp_flatten``), per row, or per column
  (``nuslerp_row_wise``); lerp where ``1 - cos²θ ≤ ε²``.
- multislerp (https://goddard.blog/posts/multislerp-wow-what-a-cool-idea): barycentric
  interpolation: map the unit vectors ``u_i`` to the tangent space at their normalised weighted
  mean ``m``, average there (``τ = Σ w_i (u_i - (u_i·m) m)``), map back with the exponential map
  ``m cos|τ| + τ sin|τ| / |τ|`` and scale by ``Σ w_i |x_i|``.
- karcher (arXiv:2603.04972): the weighted Karcher (Fréchet) mean on the unit sphere by fixed-point
  iteration ``m ← exp_m(Σ α_i log_m(u_i))``, scaled by ``Σ α_i |x_i|``; equal weights.
All in the compute dtype, as in mergekit (karcher takes norms in fp32, fp64 for fp64 inputs).
Each is one whole-tensor step: their angles come from norms and dot products in torch's own
summation order over the whole tensor (or per row or column), and karcher iterates.
"""

from __future__ import annotations

import warnings

from mergesmith._torch import torch
from mergesmith.errors import ConfigError
from mergesmith.methods.params import Params
from mergesmith.methods.spec import BasePolicy, MethodSpec, OptionalTensors, Param, Scope
from mergesmith.methods.steps import WholeTensor, fixed

COLINEAR_EPS = 1e-8  # nuslerp: lerp where 1 - cos²θ ≤ COLINEAR_EPS²
NORM_FLOOR = 1e-7  # nuslerp: smallest norm a vector is divided by
WEIGHT_EPS = 1e-6  # nuslerp: weights summing to less than this give t = 0.5


def nuslerp_pair(t: float, a: torch.Tensor, b: torch.Tensor, *, flatten: bool, row_wise: bool) -> torch.Tensor:
    shape = a.shape
    if flatten:
        a, b = a.reshape(-1), b.reshape(-1)
    elif row_wise:
        a, b = a.transpose(0, -1), b.transpose(0, -1)
    unit_a = a / torch.linalg.vector_norm(a, dim=-1, keepdim=True).clamp(min=NORM_FLOOR)
    unit_b = b / torch.linalg.vector_norm(b, dim=-1, keepdim=True).clamp(min=NORM_FLOOR)
    cos = (unit_a * unit_b).sum(dim=-1, keepdim=True).clamp(-1, 1)
    colinear = (1 - cos.square()) <= COLINEAR_EPS**2
    theta = torch.acos(torch.where(colinear, 0, cos))
    spherical = (torch.sin((1 - t) * theta) * a + torch.sin(t * theta) * b) / torch.sin(theta)
    out = torch.where(colinear, (1 - t) * a + t * b, spherical)
    if row_wise and not flatten:
        out = out.transpose(0, -1)
    return out.reshape(shape)


def nuslerp(tensors, base_index, params: Params, generator=None) -> torch.Tensor:
    others = [i for i in range(len(tensors)) if i != base_index]
    w1, w2 = (params.per_input[i].weight for i in others)
    t = 0.5 if abs(w1 + w2) < WEIGHT_EPS else w2 / (w1 + w2)
    a, b = (tensors[i] for i in others)
    shape = {"flatten": params.nuslerp_flatten, "row_wise": params.nuslerp_row_wise}
    if base_index is None:
        return nuslerp_pair(t, a, b, **shape)
    base = tensors[base_index]
    return base + nuslerp_pair(t, a - base, b - base, **shape)


def multislerp(tensors, base_index, params: Params, generator=None) -> torch.Tensor:
    others = [i for i in range(len(tensors)) if i != base_index]
    if len(others) == 1:
        return tensors[others[0]]
    base = None if base_index is None else tensors[base_index]
    points = torch.stack([tensors[i] for i in others])
    if base is not None:
        points -= base
    flat = points.view(len(others), -1)
    weights = torch.tensor([params.per_input[i].weight for i in others], dtype=points.dtype, device=points.device)
    if params.normalize_weights:
        weights = weights / weights.sum()
    eps = params.eps
    norms = torch.linalg.vector_norm(flat, dim=-1, keepdim=True)
    direction = _tangent_mean(flat / (norms + eps), weights, eps)
    if direction is None:
        out = _antipodal_fallback(points, weights)
    else:
        out = (direction * (norms.squeeze(-1) * weights).sum()).view(points.shape[1:])
    return out if base is None else out + base


def _tangent_mean(units: torch.Tensor, weights: torch.Tensor, eps: float) -> torch.Tensor | None:
    """The weighted mean of unit rows taken in the tangent space at their normalised Euclidean
    mean, mapped back to the sphere; None where that Euclidean mean is ~0."""
    mean = (units * weights.view(-1, 1)).sum(0)
    mean_norm = torch.linalg.vector_norm(mean)
    if mean_norm.item() < eps:
        if not mean_norm < eps:
            warnings.warn(
                f"multislerp: eps = {eps} rounds to 0 in {units.dtype}, so mergekit divides by a zero "
                "mean and writes NaN here; mergesmith compares in float and takes the lerp fallback",
                stacklevel=3,
            )
        return None
    mean = mean / mean_norm
    tangents = units - (units * mean).sum(-1, keepdim=True) * mean
    tangent = (tangents * weights.view(-1, 1)).sum(0)
    length = torch.linalg.vector_norm(tangent) + eps
    return mean * torch.cos(length) + tangent * (torch.sin(length) / length)


def _antipodal_fallback(points: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The weighted unit vectors cancel: two models fall back to lerp, more have no answer."""
    if points.shape[0] == 2:
        return (points[0] * weights[0] + points[1] * weights[1]).view(points.shape[1:])
    raise ConfigError(
        "multislerp: the weighted unit vectors of the models sum to zero (antipodal models with "
        "balancing weights); change the weights"
    )


def _norm(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.linalg.vector_norm(x.to(dtype))


def _karcher_step(mean, units, alphas, tol):
    """Σ α_i log_mean(u_i): the tangent toward the weighted mean (skipping u_i ≈ mean)."""
    tangent = torch.zeros_like(mean)
    for alpha, unit in zip(alphas, units):
        dot = torch.clamp(torch.dot(mean.flatten(), unit.flatten()), -1.0, 1.0)
        theta = torch.arccos(dot)
        if theta.item() < tol:
            continue
        tangent += alpha * (theta / torch.sin(theta)) * (unit - dot * mean)
    return tangent


def karcher_mean(tensors: list[torch.Tensor], max_iter: int, tol: float) -> torch.Tensor:
    if len(tensors) == 1:
        return tensors[0]
    dtype = torch.float64 if tensors[0].dtype == torch.float64 else torch.float32
    alphas = [1.0 / len(tensors)] * len(tensors)
    norms = [_norm(x, dtype) for x in tensors]
    valid = [i for i, n in enumerate(norms) if n.item() > tol]
    if not valid:
        return torch.zeros_like(tensors[0])
    units = [(tensors[i] / norms[i]).to(tensors[i].dtype) for i in valid]
    total = sum(alphas[i] for i in valid)
    weights = [alphas[i] / total for i in valid]
    mean = torch.zeros_like(units[0])
    for weight, unit in zip(weights, units):
        mean += weight * unit
    length = _norm(mean, dtype)
    mean = units[0].clone() if length.item() < tol else (mean / length).to(mean.dtype)
    for _ in range(max_iter):
        tangent = _karcher_step(mean, units, weights, tol)
        step = _norm(tangent, dtype)
        if step.item() < tol:
            break
        mean = (torch.cos(step) * mean + torch.sin(step) * (tangent / step)).to(mean.dtype)
        length = _norm(mean, dtype)
        if length.item() > tol:
            mean = (mean / length).to(mean.dtype)
    return sum(alpha * norm for alpha, norm in zip(alphas, norms)) * mean


def karcher(tensors, base_index, params: Params, generator=None) -> torch.Tensor:
    return karcher_mean(list(tensors), params.max_iter, params.tol)


WEIGHT = Param("weight", float, Scope.NON_BASE, doc="coefficient of each model (all models without a base)")
SPECS = (
    MethodSpec(
        name="nuslerp",
        pretty_name="NuSLERP",
        reference="",
        steps=fixed(WholeTensor(nuslerp)),
        params=(
            WEIGHT,
            Param("nuslerp_row_wise", bool, default=False, doc="one angle per column instead of per row"),
            Param("nuslerp_flatten", bool, default=True, doc="one angle for the whole tensor"),
        ),
        base=BasePolicy.OPTIONAL,
        min_inputs=2,
        max_inputs=3,
        min_non_base=2,
        max_non_base=2,
        optional_tensors=OptionalTensors.SINGLETON,
    ),
    MethodSpec(
        name="multislerp",
        pretty_name="Multi-SLERP",
        reference="https://goddard.blog/posts/multislerp-wow-what-a-cool-idea",
        steps=fixed(WholeTensor(multislerp)),
        params=(
            WEIGHT,
            Param("normalize_weights", bool, default=True, doc="divide weights by their sum"),
            Param("eps", float, default=1e-8, doc="added to norms before dividing"),
        ),
        base=BasePolicy.OPTIONAL,
        min_non_base=1,
    ),
    MethodSpec(
        name="karcher",
        pretty_name="Karcher Mean",
        reference="https://arxiv.org/abs/2603.04972",
        steps=fixed(WholeTensor(karcher)),
        params=(
            Param("max_iter", int, default=10, doc="fixed-point iterations at most"),
            Param("tol", float, default=1e-5, doc="stop when the tangent step is shorter"),
        ),
    ),
)
