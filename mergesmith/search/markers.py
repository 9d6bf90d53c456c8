"""Search markers: a parameter value that is ``search``, ``{range: ...}``, ``{choice: ...}``,
``{gradient: N}`` or ``{groups: N}`` (see derive.py), turned into the dims it searches."""

from __future__ import annotations

import difflib
import math
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from mergesmith.errors import ConfigError
from mergesmith.methods.spec import Param
from mergesmith.search.space import Dim

MARKER = "search"
MARKER_KEYS = ("range", "choice", "gradient", "groups")


def finite_options(kind: Any) -> tuple | None:
    """Every value of a bool / literal type (unions of them too); None when the type is open."""
    origin, args = get_origin(kind), get_args(kind)
    if origin is Annotated:
        return finite_options(args[0])
    if origin is Literal:
        return tuple(args)
    if origin is Union:
        parts = [finite_options(a) for a in args]
        return None if any(p is None for p in parts) else tuple(v for p in parts for v in p)
    if kind is bool:
        return (True, False)
    return None


def is_marker(value: Any) -> bool:
    return value == MARKER or (isinstance(value, dict) and any(k in value for k in MARKER_KEYS))


def check_spelling(setting: Any, param: Param, where: str) -> None:
    """``{rnage: [0, 1]}`` is a misspelt marker, not a value: say so, rather than let the recipe
    parser call it an unknown key of a conditional value."""
    if not isinstance(setting, dict) or is_marker(setting) or "value" in setting:
        return
    for key in setting:
        match = difflib.get_close_matches(str(key), MARKER_KEYS, n=1, cutoff=0.6)
        if match:
            raise ConfigError(
                f"{where}: unknown key '{key}' in the search marker of '{param.name}'; did you mean '{match[0]}'?"
            )


def marker_dims(param: Param, marker: Any, label: str, where: str) -> tuple[list[Dim], bool, int]:
    """The dims of a marker, whether they are a gradient's anchors, and the layer groups (0: none)."""
    spec = {} if marker == MARKER else marker
    groups = spec.get("groups") if isinstance(spec, dict) else None
    if groups is None:
        return (*_plain_dims(param, marker, label, where), 0)
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 2 or "gradient" in spec:
        raise ConfigError(
            f"{where}: '{param.name}': groups is the number of layer groups, at least 2, without gradient; "
            f"got {groups!r}"
        )
    if "choice" in spec:
        raise ConfigError(f"{where}: '{param.name}': groups take a range, not a choice")
    [dim], _ = _plain_dims(param, {k: v for k, v in spec.items() if k != "groups"}, label, where)
    return [Dim(f"{label}[g{k}]", dim.low, dim.high) for k in range(groups)], False, groups


def _plain_dims(param: Param, marker: Any, label: str, where: str) -> tuple[list[Dim], bool]:
    spec = {} if marker == MARKER else marker
    unknown = [k for k in spec if k not in MARKER_KEYS]
    if unknown:
        match = difflib.get_close_matches(str(unknown[0]), MARKER_KEYS, n=1, cutoff=0.5)
        hint = f"did you mean '{match[0]}'?" if match else f"valid keys: {', '.join(MARKER_KEYS)}"
        raise ConfigError(f"{where}: unknown key '{unknown[0]}' in the search marker of '{param.name}'; {hint}")
    choice, bounds, anchors = spec.get("choice"), spec.get("range"), spec.get("gradient")
    if choice is not None:
        if bounds is not None or anchors is not None or not isinstance(choice, list) or len(choice) < 2:
            raise ConfigError(
                f"{where}: '{param.name}': choice is a list of at least 2 values, without range or gradient"
            )
        return [Dim(label, options=tuple(param.validate(v, f"{where}: ") for v in choice))], False
    if bounds is None and anchors is None and param.search_bounds is None and finite_options(param.kind):
        return [Dim(label, options=finite_options(param.kind))], False
    bounds = param.search_bounds if bounds is None else bounds
    if bounds is None:
        raise ConfigError(
            f"{where}: '{param.name}' has no search range in the method registry; write {{range: [lo, hi]}}"
        )
    if not (
        isinstance(bounds, (list, tuple))
        and len(bounds) == 2
        and all(_number(b) for b in bounds)
        and bounds[0] < bounds[1]
    ):
        raise ConfigError(f"{where}: '{param.name}': range is [lo, hi] with finite numbers lo < hi, got {bounds!r}")
    if not _takes_floats(param):
        raise ConfigError(
            f"{where}: '{param.name}' is not a float parameter, so it takes no range; use {{choice: [...]}}"
        )
    if anchors is None:
        return [Dim(label, float(bounds[0]), float(bounds[1]))], False
    if not isinstance(anchors, int) or isinstance(anchors, bool) or anchors < 2:
        raise ConfigError(f"{where}: '{param.name}': gradient is the number of anchors, at least 2, got {anchors!r}")
    return [Dim(f"{label}[{k}]", float(bounds[0]), float(bounds[1])) for k in range(anchors)], True


def _takes_floats(param: Param) -> bool:
    try:
        return isinstance(param.validate(0.5), float)
    except ConfigError:
        return False


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
