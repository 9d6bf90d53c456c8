"""What a merge method declares: its parameters, its input contract, its pure function.

A method function is ``fn(tensors, base_index, params, generator) -> Tensor``: tensors are
already in the compute dtype, in recipe order; ``base_index`` points at the base model's
tensor (or is None); ``generator`` is a per-tensor seeded ``torch.Generator`` for random
methods and None otherwise. No IO, no device moves, no dtype changes beyond the method's own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Annotated, Any, Callable, Literal, Mapping, Optional, Sequence, Union, get_args, get_origin

import torch
from pydantic import TypeAdapter, ValidationError

from mergesmith.errors import ConfigError


class Scope(str, Enum):
    SHARED = "shared"        # one value per output tensor
    INPUT = "input"          # one value per input model, the base included
    NON_BASE = "non_base"    # one value per input model other than the base


class BasePolicy(str, Enum):
    REQUIRED = "required"
    OPTIONAL = "optional"    # the base is used when the recipe names one among the sources
    IGNORED = "ignored"      # a named base is one more ordinary input


class OptionalTensors(str, Enum):
    """An optional tensor (e.g. an untied lm_head) that only some inputs have."""

    ERROR = "error"                    # a missing-tensor error
    SINGLETON = "singleton"            # exactly one input has it: copy that one
    BASE_SINGLETON = "base_singleton"  # only the base has it: copy the base's
    BASE_OR_SKIP = "base_or_skip"      # too few inputs for the method: the base's if only it has it, else omit


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
            raise ConfigError(f"{where}parameter '{self.name}' = {value!r} is not {describe(self.kind)}") from None


def describe(kind: Any) -> str:
    """``a float``, ``true, false or 'paper'``: a parameter type as a user reads it."""
    options = _alternatives(kind)
    return options[0] if len(options) == 1 else ", ".join(options[:-1]) + " or " + options[-1]


def _alternatives(kind: Any) -> list[str]:
    origin, args = get_origin(kind), get_args(kind)
    if origin is Annotated:
        return _alternatives(args[0])
    if origin is Literal:
        return [repr(a) for a in args]
    if origin is Union:
        return [option for a in args for option in _alternatives(a)]
    if kind is bool:
        return ["true", "false"]
    if kind is type(None):
        return ["null"]
    name = getattr(kind, "__name__", str(kind))
    return [f"an {name}" if name[0] in "aeiou" else f"a {name}"]


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
    optional_tensors: OptionalTensors = OptionalTensors.ERROR
    # Inputs other than the base (all inputs when there is no base).
    min_non_base: int = 0
    max_non_base: Optional[int] = None
    # Cross-parameter checks for one job, run at plan time: raise ConfigError, warn on
    # suspicious values. ``where`` prefixes messages (recipe and tensor).
    check: Optional[Callable[[MethodParams, str], None]] = None

    def param(self, name: str) -> Param:
        return next(p for p in self.params if p.name == name)
