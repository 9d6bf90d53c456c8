"""SLERP between the base and one other model.

``slerp(t; a, b) = sin((1-t)θ)/sin θ · a + sin(tθ)/sin θ · b`` with ``cos θ`` the cosine
between the flattened tensors; falls back to ``(1-t)·a + t·b`` when ``|cos θ| > 0.9995``.
Computed in fp32 (fp64 for fp64 inputs), in chunks so scratch memory stays bounded; the
chunked norm (a norm of per-chunk norms) follows mergekit so results agree bit for bit. The
method is a stream (three passes over the inputs), so a large tensor never needs to be in memory.
"""

from __future__ import annotations

from mergesmith import native
from mergesmith._torch import torch
from mergesmith.methods.spec import (
    UNIT,
    BasePolicy,
    MethodParams,
    MethodSpec,
    OptionalTensors,
    Param,
    in_memory,
)

CHUNK = 1024 * 1024
DOT_THRESHOLD = 0.9995
EPS = 1e-8


def _ranges(n: int):
    for start in range(0, n, CHUNK):
        yield start, min(n, start + CHUNK)


def _norm(read, n: int, buf: torch.Tensor) -> torch.Tensor:
    """A norm of per-chunk norms (mergekit's order), each chunk widened into ``buf``."""
    parts = []
    for start, stop in _ranges(n):
        chunk, src = buf[: stop - start], read(start, stop)
        exact = native.norm2(src) if buf.dtype == torch.float32 else None
        if exact is not None:    # torch's bits straight from bf16/fp16, without the float32 copy
            parts.append(torch.tensor([exact], dtype=buf.dtype))
            continue
        if native.available(src) and buf.dtype == torch.float32:
            native.widen(src, chunk)   # no torch op (and no thread team) for a plain widening
        else:
            chunk.copy_(src)
        parts.append(torch.linalg.vector_norm(chunk).reshape(1))
    norm = torch.linalg.vector_norm(torch.stack(parts))
    return torch.where(norm > EPS, norm, 1)


def _dot(read_a, read_b, n: int, norm_a, norm_b, buf_a: torch.Tensor, buf_b: torch.Tensor) -> torch.Tensor:
    """``sum((a / |a|) * (b / |b|))`` chunk by chunk, in place in the buffers (same ops, same bits)."""
    parts = []
    fused = buf_a.dtype == torch.float32
    na, nb = float(norm_a), float(norm_b)
    for start, stop in _ranges(n):
        x, y, a, b = buf_a[: stop - start], buf_b[: stop - start], read_a(start, stop), read_b(start, stop)
        exact = native.scaled_dot(a, b, na, nb) if fused else None
        if exact is not None:   # torch's sum of the products, bit for bit, without the product buffer
            parts.append(torch.tensor([exact], dtype=buf_a.dtype))
            continue
        if fused and native.available(a, b):
            native.scaled_product(a, b, na, nb, x)
        else:
            x.copy_(a)
            y.copy_(b)
            torch.div(x, norm_a, out=x)
            torch.div(y, norm_b, out=y)
            x.mul_(y)
        parts.append(x.sum().reshape(1))
    return torch.stack(parts).sum().clamp(-1, 1)


def slerp_stream(read, n: int, dtype: torch.dtype, base_index, params: MethodParams, emit) -> bool:
    """Three passes over the inputs: both norms, the cosine, then the blend chunk by chunk."""
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    other = 1 - base_index
    read_a = lambda start, stop: read(base_index, start, stop)
    read_b = lambda start, stop: read(other, start, stop)
    if n == 0:
        emit(0, torch.empty(0, dtype=dtype))
        return True
    buf_a, buf_b = torch.empty(min(n, CHUNK), dtype=acc), torch.empty(min(n, CHUNK), dtype=acc)
    norm_a, norm_b = _norm(read_a, n, buf_a), _norm(read_b, n, buf_b)
    dot = _dot(read_a, read_b, n, norm_a, norm_b, buf_a, buf_b)
    tt = torch.tensor(params.shared["t"], dtype=acc)
    linear = dot.abs() > DOT_THRESHOLD
    theta = torch.acos(torch.where(linear, 0, dot))
    sin_theta = torch.sin(theta)
    coef_a = torch.where(linear, 1 - tt, torch.sin((1 - tt) * theta) / sin_theta)
    coef_b = torch.where(linear, tt, torch.sin(tt * theta) / sin_theta)
    out = torch.empty(min(n, CHUNK), dtype=dtype)     # reused: emit copies each chunk
    for start, stop in _ranges(n):
        a, b = read_a(start, stop), read_b(start, stop)
        if native.available(a, b, out):
            # One fused pass, same float32 arithmetic and rounding as the torch line below.
            emit(start, native.lerp2(a, b, float(coef_a), float(coef_b), out))
        else:
            emit(start, (coef_a * a.to(acc) + coef_b * b.to(acc)).to(dtype))
    return True


def slerp(tensors, base_index, params: MethodParams, generator=None) -> torch.Tensor:
    return in_memory(slerp_stream, tensors, base_index, params)


SPEC = MethodSpec(
    name="slerp", pretty_name="SLERP", reference="https://en.wikipedia.org/wiki/Slerp", fn=slerp,
    params=(Param("t", float, doc="0 gives the base model, 1 the other", domain=UNIT),),
    base=BasePolicy.REQUIRED, min_inputs=2, max_inputs=2, optional_tensors=OptionalTensors.SINGLETON,
    stream=slerp_stream,
)
