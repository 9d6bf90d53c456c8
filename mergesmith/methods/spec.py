"""What a merge method declares: its parameters, its input contract, its pure function.

A method function is ``fn(tensors, base_index, params, generator) -> Tensor``: tensors are
already in the compute dtype, in recipe order; ``base_index`` points at the base model's
tensor (or is None); ``generator`` is a per-tensor seeded ``torch.Generator`` for random
methods and None otherwise. No IO, no device moves, no dtype changes beyond the method's own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Mapping, Optional, Sequence

import torch
from pydantic import TypeAdapter, ValidationError

from mergesmith.errors import ConfigError


class Scope(str, Enum):
    SHARED = "shared"        # one value per output tensor
    INPUT = "input"          # one value per input model, the base included
    NON_BASE = "non_base"    # one value per input model other than the base


class BasePolicy(str, Enum):
    REQUIRED = "required"
    IGNORED = "ignored"


REQUIRED = object()


@dataclass(frozen=True)
class Param:
    name: str
    kind: Any
    scope: Scope = Scope.SHARED
    default: Any = REQUIRED
    doc: str = ""
    _adapter: TypeAdapter = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "_adapter", TypeAdapter(self.kind))

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def validate(self, value: Any, where: str = "") -> Any:
        try:
            return self._adapter.validate_python(value)
        except ValidationError:
            kind = getattr(self.kind, "__name__", str(self.kind))
            raise ConfigError(f"{where}parameter '{self.name}' = {value!r} is not a valid {kind}") from None


@dataclass(frozen=True)
class MethodParams:
    """Resolved values for one output tensor: shared ones, and one mapping per input."""

    shared: Mapping[str, Any]
    per_input: tuple[Mapping[str, Any], ...]

    def each(self, name: str, indices: Sequence[int]) -> list[Any]:
        return [self.per_input[i][name] for i in indices]


MethodFn = Callable[[Sequence[torch.Tensor], Optional[int], MethodParams, Optional[torch.Generator]], torch.Tensor]


@dataclass(frozen=True)
class MethodSpec:
    name: str
    pretty_name: str
    reference: str
    fn: MethodFn
    params: tuple[Param, ...] = ()
    base: BasePolicy = BasePolicy.IGNORED
    min_inputs: int = 1
    max_inputs: Optional[int] = None
    random: bool = False
    # An optional tensor that only one input has is copied from it (mergekit: slerp).
    singleton_passthrough: bool = False

    def param(self, name: str) -> Param:
        return next(p for p in self.params if p.name == name)
