"""SLERP between the base and one other model.

``slerp(t; a, b) = sin((1-t)θ)/sin θ · a + sin(tθ)/sin θ · b`` with ``cos θ`` the cosine
between the flattened tensors; falls back to ``(1-t)·a + t·b`` when ``|cos θ| > 0.9995``.
Computed in fp32 (fp64 for fp64 inputs). Three steps over ranges: the two norms, the cosine
(both per 2^20-element chunk, a norm of per-chunk norms and a sum of per-chunk sums, as
mergekit chunks them, so results agree bit for bit), then the blend.
"""

from __future__ import annotations

from mergesmith import native
from mergesmith._torch import torch
from mergesmith.methods import steps
from mergesmith.methods.spec import UNIT, BasePolicy, MethodSpec, OptionalTensors, Param
from mergesmith.methods.steps import Combine, Pass, fixed

CHUNK = 1024 * 1024
DOT_THRESHOLD = 0.9995
EPS = 1e-8


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


class _PairPass(Pass):
    """A pass over the base and the other model, per 2^20-element chunk, with a float buffer
    per input for the torch path (widened copies, products)."""

    chunk = CHUNK

    def __init__(self, ctx):
        super().__init__(ctx)
        self.acc = _acc(ctx.dtype)
        self.parts: tuple[list, list] = ([], [])
        self._bufs: tuple[torch.Tensor, torch.Tensor] | None = None

    def reads(self):
        return (self.ctx.base_index, 1 - self.ctx.base_index)

    def bufs(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``size`` elements of the float buffers, made on first use (the kernels need none)."""
        if self._bufs is None:
            full = min(self.ctx.n, CHUNK)
            self._bufs = (torch.empty(full, dtype=self.acc), torch.empty(full, dtype=self.acc))
        return self._bufs[0][:size], self._bufs[1][:size]


class Norms(_PairPass):
    """|a| and |b|: each a norm of per-chunk norms (mergekit's order); ~0 counts as 1."""

    name = "norms"

    def add(self, start, chunks):
        for side, (src, parts) in enumerate(zip(chunks, self.parts)):
            exact = native.norm2(src) if self.acc == torch.float32 else None
            if exact is not None:  # torch's bits straight from bf16/fp16, without the float32 copy
                parts.append(torch.tensor([exact], dtype=self.acc))
                continue
            buf = self.bufs(src.numel())[side]
            if native.available(src) and self.acc == torch.float32:
                native.widen(src, buf)  # no torch op (and no thread team) for a plain widening
            else:
                buf.copy_(src)
            parts.append(torch.linalg.vector_norm(buf).reshape(1))

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        norms = (torch.linalg.vector_norm(torch.stack(parts)) for parts in self.parts)
        return tuple(torch.where(norm > EPS, norm, 1) for norm in norms)


class Cosine(_PairPass):
    """``sum((a / |a|) * (b / |b|))`` chunk by chunk, clamped to [-1, 1]."""

    name = "cosine"

    def add(self, start, chunks):
        (a, b), (norm_a, norm_b) = chunks, self.ctx.stats["norms"]
        na, nb = float(norm_a), float(norm_b)
        fused = self.acc == torch.float32
        exact = native.scaled_dot(a, b, na, nb) if fused else None
        if exact is not None:  # torch's sum of the products, bit for bit, without the product buffer
            self.parts[0].append(torch.tensor([exact], dtype=self.acc))
            return
        x, y = self.bufs(a.numel())
        if fused and native.available(a, b):
            native.scaled_product(a, b, na, nb, x)
        else:  # the same ops, in place in the buffers
            x.copy_(a)
            y.copy_(b)
            torch.div(x, norm_a, out=x)
            torch.div(y, norm_b, out=y)
            x.mul_(y)
        self.parts[0].append(x.sum().reshape(1))

    def result(self) -> torch.Tensor:
        return torch.stack(self.parts[0]).sum().clamp(-1, 1)


class Blend(Combine):
    """``c_a·a + c_b·b`` with the coefficients from the cosine, in float (C: one fused pass)."""

    def __init__(self, ctx):
        super().__init__(ctx)
        self.acc = _acc(ctx.dtype)
        dot, tt = ctx.stats["cosine"], torch.tensor(ctx.params.t, dtype=self.acc)
        linear = dot.abs() > DOT_THRESHOLD
        theta = torch.acos(torch.where(linear, 0, dot))
        sin_theta = torch.sin(theta)
        self.coef_a = torch.where(linear, 1 - tt, torch.sin((1 - tt) * theta) / sin_theta)
        self.coef_b = torch.where(linear, tt, torch.sin(tt * theta) / sin_theta)
        self.out = torch.empty(min(ctx.n, steps.RANGE), dtype=ctx.dtype)  # reused: the executor copies each range out

    def reads(self):
        return (self.ctx.base_index, 1 - self.ctx.base_index)

    def apply(self, start, chunks) -> torch.Tensor:
        a, b = chunks
        if native.available(a, b, self.out):
            # One fused pass, same float32 arithmetic and rounding as the torch line below.
            return native.lerp2(a, b, float(self.coef_a), float(self.coef_b), self.out)
        return (self.coef_a * a.to(self.acc) + self.coef_b * b.to(self.acc)).to(a.dtype)


SPEC = MethodSpec(
    name="slerp",
    pretty_name="SLERP",
    reference="https://en.wikipedia.org/wiki/Slerp",
    steps=fixed(Norms, Cosine, Blend),
    params=(Param("t", float, doc="0 gives the base model, 1 the other", domain=UNIT),),
    base=BasePolicy.REQUIRED,
    min_inputs=2,
    max_inputs=2,
    optional_tensors=OptionalTensors.SINGLETON,
)
