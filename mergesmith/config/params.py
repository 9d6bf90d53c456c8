"""Parameter values per tensor: filters, gradients and precedence, as mergekit resolves them.

A gradient ``[v0, ..., vn]`` at relative layer position ``t`` in [0, 1] is the piecewise
linear interpolation ``(1 - f) * v[i] + f * v[i+1]`` with ``i = floor(t * n)``,
``f = t * n - i``; non-numeric anchors are chosen, not interpolated.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from mergesmith.config.schema import Conditional, Parameters, Scalar, Setting


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def interpolate(anchors: tuple[Scalar, ...], t: float, validate: Callable[[Any], Any]) -> Any:
    """The gradient's value at ``t``; anchors are validated before they are mixed."""
    if not anchors:
        return None
    values = [validate(v) for v in anchors]
    scaled = t * (len(anchors) - 1)
    if not all(_is_number(v) for v in values):
        return values[int(scaled)]
    i0 = int(scaled)
    i1 = min(len(anchors) - 1, i0 + 1)
    frac = scaled - i0
    return validate((1 - frac) * values[i0] + frac * values[i1])


def filter_matches(filter_: str | None, tensor_name: str) -> bool:
    """mergekit's rule: no filter or ``*`` matches all; otherwise a substring test."""
    return filter_ is None or filter_ == "*" or (bool(tensor_name) and filter_ in tensor_name)


def evaluate(setting: Setting, tensor_name: str, t: float, validate: Callable[[Any], Any]) -> Any:
    """One setting for one tensor; ``None`` when no conditional matches (fall through)."""
    if isinstance(setting, Conditional):
        setting = (setting,)
    if isinstance(setting, tuple) and setting and isinstance(setting[0], Conditional):
        for cond in setting:
            if filter_matches(cond.filter, tensor_name):
                value = cond.value
                return interpolate(value, t, validate) if isinstance(value, tuple) else validate(value)
        return None
    if isinstance(setting, tuple):
        return interpolate(setting, t, validate)
    return validate(setting)


def resolve(
    name: str,
    scopes: Iterable[Parameters | None],
    tensor_name: str,
    t: float,
    validate: Callable[[Any], Any],
) -> tuple[bool, Any]:
    """First scope (highest precedence first) whose setting for ``name`` yields a value.

    Returns ``(found, value)``.
    """
    for scope in scopes:
        if scope is not None and name in scope:
            value = evaluate(scope[name], tensor_name, t, validate)
            if value is not None:
                return True, value
    return False, None
