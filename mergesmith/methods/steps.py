"""The one method contract: statistics passes over element ranges, then a combine over ranges.

A method declares, for one tensor's parameters, its steps ``(pass, ..., combine)``
(``MethodSpec.steps``). The executor (execute/method.py) runs every method the same way:

- each pass (``Pass``) is fed ranges of the inputs it ``reads``, in order (``add``); it may ask
  for another sweep (``again``: radix selection sweeps once per 16-bit digit), then its
  ``result()`` is stored in ``ctx.stats[name]`` for the steps after it;
- the combine (``Combine``) makes each output range from the same ranges of the inputs and the
  statistics, and the executor writes the range before asking for the next.

A step that needs every input whole (``whole = True``: DARE's mask drawn for the whole shape,
row-wise and iterative methods) gets one range, the inputs in their shapes. ``WholeTensor``
adapts a pure function ``fn(tensors, base_index, params, generator) -> Tensor`` into such a combine.
Steps are pure: no IO, no device moves; inputs arrive in the compute dtype on the merge's device,
and where a C kernel (mergesmith/native) can take them a step uses it for the same bits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, ClassVar

from mergesmith._torch import torch
from mergesmith.methods.params import Params

RANGE = 1 << 20  # elements per range, unless a step sets its own (read at run time: tests shrink it)


@dataclass(frozen=True)
class Context:
    """What every step of one output tensor sees."""

    params: Params
    base_index: int | None
    shape: tuple[int, ...]
    dtype: torch.dtype  # the compute dtype
    generator: torch.Generator | None = None  # per-tensor draws of random methods
    stats: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def n(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count

    @property
    def others(self) -> list[int]:
        """Inputs other than the base (every input without one)."""
        return [i for i in range(len(self.params.per_input)) if i != self.base_index]

    def with_stat(self, name: str, value: Any) -> Context:
        return replace(self, stats=MappingProxyType({**self.stats, name: value}))


def spans(lo: int, hi: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(lo, hi, size):
        yield start, min(hi, start + size)


class Step:
    """A pass or the combine of one tensor, made by the executor with the tensor's context."""

    whole: ClassVar[bool] = False  # True: one range, every input whole and in its shape
    chunk: ClassVar[int | None] = None  # range length the step is defined over (None: RANGE)

    def __init__(self, ctx: Context):
        self.ctx = ctx

    def reads(self) -> Sequence[int]:
        """The inputs whose ranges the step takes, in this order."""
        return range(len(self.ctx.params.per_input))

    def ranges(self) -> Iterator[tuple[int, int]]:
        if self.whole:
            return iter([(0, self.ctx.n)])
        return spans(0, self.ctx.n, self.chunk or RANGE)


class Pass(Step):
    """A statistic accumulated over ranges."""

    name: ClassVar[str]

    def add(self, start: int, chunks: Sequence[torch.Tensor]) -> bool | None:
        """Take the inputs' elements from ``start``; True when this sweep has seen enough."""
        raise NotImplementedError

    def again(self) -> bool:
        """After a sweep: True to be fed another (its ranges may differ)."""
        return False

    def result(self) -> Any:
        raise NotImplementedError


class Combine(Step):
    """The output, range by range, from the inputs' ranges and the statistics."""

    def apply(self, start: int, chunks: Sequence[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError


MethodFn = Callable[[Sequence["torch.Tensor"], "int | None", Params, "torch.Generator | None"], "torch.Tensor"]


@dataclass(frozen=True)
class WholeTensor:
    """The one-step form of a method that needs every input whole: ``fn`` as its combine."""

    fn: MethodFn
    whole: ClassVar[bool] = True

    def __call__(self, ctx: Context) -> Combine:
        return _Whole(self.fn, ctx)


class _Whole(Combine):
    whole = True

    def __init__(self, fn: MethodFn, ctx: Context):
        super().__init__(ctx)
        self.fn = fn

    def apply(self, start: int, chunks: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.fn(list(chunks), self.ctx.base_index, self.ctx.params, self.ctx.generator)


StepFactory = Callable[[Context], Step]  # a Step subclass, or a WholeTensor
Steps = Callable[[Params], Sequence[StepFactory]]


def fixed(*steps: StepFactory) -> Steps:
    """The same steps whatever the parameters."""
    return lambda params: steps
