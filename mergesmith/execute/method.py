"""Run one method on one tensor: every method the same way (the contract in methods/steps.py).

For each statistics pass: read ranges of the inputs it reads and feed them to it, sweep again
while it asks; then the combine, each output range handed to ``emit`` as soon as it is made
(the runner checks it is finite and writes it). Where the inputs come from is a ``Source``:
the files range by range (execute/stream.py), or tensors in memory (``MemorySource``); a
step that needs the whole tensor gets every input whole, in its shape, as one range.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch

from mergesmith.errors import MergesmithError
from mergesmith.methods.params import Params
from mergesmith.methods.spec import MethodSpec
from mergesmith.methods.steps import Combine, Context, Pass, Step

Emit = Callable[[int, torch.Tensor], None]  # (flat start, output range): copied before it returns


class Source(Protocol):
    def read(self, i: int, start: int, stop: int) -> torch.Tensor:
        """Input i's elements [start, stop), flat, in the compute dtype, on the merge's device;
        valid until the next read of input i."""

    def whole(self, i: int) -> torch.Tensor:
        """Input i whole, in its shape."""


class MemorySource:
    """Inputs already in memory (mapped or computed), in the compute dtype, on the merge's device."""

    def __init__(self, tensors: Sequence[torch.Tensor]):
        self.tensors = list(tensors)
        self.flats = [t.reshape(-1) for t in self.tensors]

    def read(self, i: int, start: int, stop: int) -> torch.Tensor:
        return self.flats[i][start:stop]

    def whole(self, i: int) -> torch.Tensor:
        return self.tensors[i]


def is_ranged(spec: MethodSpec, params: Params) -> bool:
    """Every step of the method takes ranges (none needs a whole tensor) for these parameters."""
    return not any(step.whole for step in spec.steps(params))


def _inputs(step: Step, source: Source, start: int, stop: int) -> list[torch.Tensor]:
    if step.whole:
        return [source.whole(i) for i in step.reads()]
    return [source.read(i, start, stop) for i in step.reads()]


def statistic(step: Pass, source: Source):
    """Sweep ``step`` over the source until it is done; its result."""
    while True:
        for start, stop in step.ranges():
            if step.add(start, _inputs(step, source, start, stop)):
                break
        if not step.again():
            return step.result()


def _combine(step: Combine, source: Source, emit: Emit) -> None:
    for start, stop in step.ranges():
        out = step.apply(start, _inputs(step, source, start, stop))
        if step.whole and tuple(out.shape) != step.ctx.shape:
            raise MergesmithError(
                f"internal: a {type(step).__name__} step made {tuple(out.shape)}, planned {step.ctx.shape}"
            )
        emit(start, out.reshape(-1))


def run_method(spec: MethodSpec, ctx: Context, source: Source, emit: Emit) -> None:
    """The passes in order, each one's result in the context of the steps after it, then the combine."""
    if ctx.n == 0:
        return  # nothing to write, nothing to compute
    *passes, combine = spec.steps(ctx.params)
    for make in passes:
        ctx = _with_statistic(make, ctx, source)
    _combine(combine(ctx), source, emit)


def _with_statistic(make: Callable[[Context], Pass], ctx: Context, source: Source) -> Context:
    # The pass (its buffers, its histograms) is dropped here, before the next step makes its own.
    step = make(ctx)
    return ctx.with_stat(step.name, statistic(step, source))


def merge_tensors(
    spec: MethodSpec,
    tensors: Sequence[torch.Tensor],
    base_index: int | None,
    params: Params,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The method on tensors in memory, its output as one tensor in the dtype the method makes
    (tests, tools): the same steps as a merge, over the same ranges."""
    shape = tuple(tensors[0].shape)
    parts: list[torch.Tensor] = []

    def emit(start: int, chunk: torch.Tensor) -> None:
        if not parts:
            parts.append(torch.empty(shape, dtype=chunk.dtype, device=chunk.device))
        parts[0].view(-1)[start : start + chunk.numel()] = chunk

    ctx = Context(params, base_index, shape, tensors[0].dtype, generator)
    run_method(spec, ctx, MemorySource(tensors), emit)
    return parts[0] if parts else torch.empty(shape, dtype=tensors[0].dtype, device=tensors[0].device)
