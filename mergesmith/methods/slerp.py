"""SLERP between the base and one other model.

``slerp(t; a, b) = sin((1-t)θ)/sin θ · a + sin(tθ)/sin θ · b`` with ``cos θ`` the cosine
between the flattened tensors; falls back to ``(1-t)·a + t·b`` when ``|cos θ| > 0.9995``.
Computed in fp32 (fp64 for fp64 inputs), in chunks so scratch memory stays bounded; the
chunked norm (a norm of per-chunk norms) follows mergekit so results agree bit for bit.
"""

from __future__ import annotations

import torch

from mergesmith import native
from mergesmith.methods.spec import BasePolicy, MethodParams, MethodSpec, OptionalTensors, Param

CHUNK = 1024 * 1024
DOT_THRESHOLD = 0.9995
EPS = 1e-8


def _chunks(flat: torch.Tensor, dtype: torch.dtype):
    for start in range(0, flat.numel(), CHUNK):
        yield start, flat[start : start + CHUNK].to(dtype)


def _norm(flat: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    parts = [torch.linalg.vector_norm(c).reshape(1) for _, c in _chunks(flat, dtype)]
    norm = torch.linalg.vector_norm(torch.stack(parts))
    return torch.where(norm > EPS, norm, 1)


def slerp_pair(t: float, v0: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
    dtype = torch.float64 if v0.dtype == torch.float64 else torch.float32
    a, b = v0.reshape(-1), v1.reshape(-1)
    tt = torch.tensor(t, dtype=dtype)
    if a.numel() == 0:
        return v0.clone()
    norm_a, norm_b = _norm(a, dtype), _norm(b, dtype)
    dots = [((x / norm_a) * (b[s : s + CHUNK].to(dtype) / norm_b)).sum().reshape(1) for s, x in _chunks(a, dtype)]
    dot = torch.stack(dots).sum().clamp(-1, 1)
    linear = dot.abs() > DOT_THRESHOLD
    theta = torch.acos(torch.where(linear, 0, dot))
    sin_theta = torch.sin(theta)
    coef_a = torch.where(linear, 1 - tt, torch.sin((1 - tt) * theta) / sin_theta)
    coef_b = torch.where(linear, tt, torch.sin(tt * theta) / sin_theta)
    if native.available(a, b):
        # One fused pass, same float32 arithmetic and rounding as the loop below.
        return native.lerp2(a, b, float(coef_a), float(coef_b)).reshape(v0.shape)
    out = torch.empty_like(a)
    for start, x in _chunks(a, dtype):
        out[start : start + CHUNK] = coef_a * x + coef_b * b[start : start + CHUNK].to(dtype)
    return out.reshape(v0.shape)


def slerp(tensors, base_index, params: MethodParams, generator=None) -> torch.Tensor:
    other = 1 - base_index
    return slerp_pair(params.shared["t"], tensors[base_index], tensors[other])


SPEC = MethodSpec(
    name="slerp", pretty_name="SLERP", reference="https://en.wikipedia.org/wiki/Slerp", fn=slerp,
    params=(Param("t", float, doc="0 gives the base model, 1 the other"),),
    base=BasePolicy.REQUIRED, min_inputs=2, max_inputs=2, optional_tensors=OptionalTensors.SINGLETON,
)
