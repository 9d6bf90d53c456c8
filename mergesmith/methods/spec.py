"""What a merge method declares: its parameters, its input contract, its steps.

The steps (methods/steps.py) see the inputs in the compute dtype, in recipe order; the
context's ``base_index`` points at the base model's tensor (or is None) and its ``generator``
is a per-tensor seeded ``torch.Generator`` for random methods, None otherwise. No IO, no device
moves, no dtype changes beyond the method's own. The parameters arrive as the method's own
frozen type (methods/params.py), generated from its ``Param`` declarations.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType, UnionType
from typing import (
    Annotated,
    Any,
    Literal,
    Union,
    get_args,
    get_origin,
)

from pydantic import TypeAdapter, ValidationError

from mergesmith.errors import ConfigError
from mergesmith.methods.params import Params, params_type
from mergesmith.methods.steps import Steps


class Scope(str, Enum):
    SHARED = "shared"  # one value per output tensor
    INPUT = "input"  # one value per input model, the base included
    NON_BASE = "non_base"  # one value per input model other than the base
    # One value per non-base model for the whole merge, never per tensor (a calibrated method's
    # texts: plan/calibration.py reads it); not part of the per-tensor params type.
    MODEL = "model"


class BasePolicy(str, Enum):
    REQUIRED = "required"
    OPTIONAL = "optional"  # the base is used when the recipe names one among the sources
    IGNORED = "ignored"  # a named base is one more ordinary input


class OptionalTensors(str, Enum):
    """An optional tensor (e.g. an untied lm_head) that only some inputs have."""

    ERROR = "error"  # a missing-tensor error
    SINGLETON = "singleton"  # exactly one input has it: copy that one
    BASE_SINGLETON = "base_singleton"  # only the base has it: copy the base's
    BASE_OR_SKIP = "base_or_skip"  # too few inputs for the method: the base's if only it has it, else omit


REQUIRED = object()

# The range `mergesmith search` explores for a parameter the space marks `search` without a range
# of its own. Keyed by name because a name means one thing in every method (STYLE: one word, one
# meaning); `epsilon` is left out on purpose: DELLA's is a probability spread, RAM's a tolerance.
SEARCH_BOUNDS: Mapping[str, tuple[float, float]] = MappingProxyType(
    {
        "weight": (0.0, 1.0),
        "t": (0.0, 1.0),
        "density": (0.1, 1.0),
        "lambda": (0.0, 2.0),
        "gamma": (0.0, 0.1),
        "select_topk": (0.05, 1.0),
        "rank_fraction": (0.05, 1.0),
        "common_space_fraction": (0.0, 1.0),
    }
)


@dataclass(frozen=True)
class Interval:
    """Where a numeric parameter is defined: ``(0, 1]`` is ``Interval(0, 1, low_open=True)``."""

    low: float
    high: float
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def __str__(self) -> str:
        return f"{'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


UNIT = Interval(0.0, 1.0)  # t of slerp: 0 is the base, 1 the other model
FRACTION = Interval(0.0, 1.0, low_open=True)  # densities and kept fractions


@dataclass(frozen=True)
class Param:
    name: str
    kind: Any
    scope: Scope = Scope.SHARED
    default: Any = REQUIRED
    doc: str = ""
    domain: Interval | None = None
    # The search range of a name whose meaning differs between methods (``alpha``: a task-vector
    # scale in tsv / iso_c, a Gram blend in regmean), where SEARCH_BOUNDS cannot hold one.
    search: tuple[float, float] | None = None
    _adapter: TypeAdapter = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "_adapter", TypeAdapter(self.kind))

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    @property
    def search_bounds(self) -> tuple[float, float] | None:
        """The range a search explores when the space gives none (None: the space must give one)."""
        return self.search if self.search is not None else SEARCH_BOUNDS.get(self.name)

    def validate(self, value: Any, where: str = "") -> Any:
        """The value as the method takes it. Strict: ``"0.5"`` is not a float, ``1`` not a bool;
        NaN and infinities are refused, and so is a number outside the parameter's domain."""
        try:
            checked = self._adapter.validate_python(value, strict=True)
        except ValidationError:
            raise ConfigError(f"{where}parameter '{self.name}' = {value!r} is not {describe(self.kind)}") from None
        if isinstance(checked, float) and not math.isfinite(checked):
            raise ConfigError(f"{where}parameter '{self.name}' = {value!r} is not a finite number; give a finite value")
        if (
            self.domain is not None
            and isinstance(checked, (int, float))
            and not isinstance(checked, bool)
            and checked not in self.domain
        ):
            raise ConfigError(
                f"{where}parameter '{self.name}' = {value!r} is outside {self.domain}, "
                f"where this method defines it; give a value in {self.domain}"
            )
        return checked


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
    if origin is Union or origin is UnionType:  # Optional[int] and int | None
        return [option for a in args for option in _alternatives(a)]
    if kind is bool:
        return ["true", "false"]
    if kind is type(None):
        return ["null"]
    name = getattr(kind, "__name__", str(kind))
    return [f"an {name}" if name[0] in "aeiou" else f"a {name}"]


@dataclass(frozen=True)
class MethodSpec:
    name: str
    pretty_name: str
    reference: str
    # The steps for one tensor's parameters: statistics passes, then the combine (methods/steps.py).
    steps: Steps
    params: tuple[Param, ...] = ()
    base: BasePolicy = BasePolicy.IGNORED
    min_inputs: int = 1
    max_inputs: int | None = None
    random: bool = False
    optional_tensors: OptionalTensors = OptionalTensors.ERROR
    # Inputs other than the base (all inputs when there is no base).
    min_non_base: int = 0
    max_non_base: int | None = None
    # Cross-parameter checks for one job, run at plan time: raise ConfigError, warn on
    # suspicious values. ``where`` prefixes messages (recipe and tensor).
    check: Callable[[Params, str], None] | None = None
    # Values the planner settles from one job's shape and input count, so that `plan` shows what
    # will be computed (tsv: ``k`` from ``rank_fraction``): ``(params, shape, inputs, where)`` ->
    # params; raises ConfigError for values the shape rules out.
    settle: Callable[[Params, tuple[int, ...], int, str], Params] | None = None
    # Data-aware: each non-base model's linear-layer jobs also take its Gram matrices from the
    # calibration stage as inputs (plan/calibration.py, mergesmith/calibrate).
    calibrated: bool = False

    @functools.cached_property
    def params_type(self) -> type[Params]:
        """The frozen type of this method's resolved parameters, generated from ``params`` (on
        first use: a plan needs one method's, and ``mergesmith --help`` none)."""
        names = lambda *scopes: [p.name for p in self.params if p.scope in scopes]
        return params_type(self.name, names(Scope.SHARED), names(Scope.INPUT), names(Scope.NON_BASE))

    def param(self, name: str) -> Param:
        return next(p for p in self.params if p.name == name)
