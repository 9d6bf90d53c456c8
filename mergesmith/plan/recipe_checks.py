"""Checks of a recipe's parameters as written, before and after planning.

Resolving a parameter per tensor only ever looks at the names a method declares, and only at the
conditional that matches; these checks look at everything the user wrote, in every scope (the
top level, a slice, a model or a slice's source, and every conditional and gradient anchor), so a
typo or a bad value anywhere is an error instead of a setting that silently applies nowhere.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Iterable, Iterator

from mergesmith.config.params import filter_matches
from mergesmith.config.schema import Conditional, Parameters, Recipe, Setting
from mergesmith.errors import ConfigError
from mergesmith.methods.registry import METHODS
from mergesmith.methods.spec import MethodSpec, Scope

# Declared by some mergekit methods only to choose a storage type; harmless elsewhere, so a
# recipe copied from a TIES merge to another method keeps running (with a warning).
_HARMLESS = ("int8_mask",)


def _scopes(recipe: Recipe) -> Iterator[tuple[str, Parameters, bool]]:
    """(where, parameters, per model?) for every scope the recipe writes parameters in."""
    if recipe.parameters:
        yield "parameters", recipe.parameters, False
    for i, entry in enumerate(recipe.models or ()):
        if entry.parameters:
            yield f"models[{i}].parameters", entry.parameters, True
    for i, out_slice in enumerate(recipe.slices or ()):
        if out_slice.parameters:
            yield f"slices[{i}].parameters", out_slice.parameters, False
        for j, src in enumerate(out_slice.sources):
            if src.parameters:
                yield f"slices[{i}].sources[{j}].parameters", src.parameters, True


def _scalars(setting: Setting) -> Iterator[tuple[str, object]]:
    """Every scalar a setting holds, with its position (``[1].value[2]``)."""
    conditionals = (setting,) if isinstance(setting, Conditional) else setting
    if isinstance(conditionals, tuple) and conditionals and isinstance(conditionals[0], Conditional):
        for k, cond in enumerate(conditionals):
            prefix = f"[{k}].value" if isinstance(setting, tuple) else ".value"
            yield from ((prefix + at, v) for at, v in _scalars(cond.value))
    elif isinstance(setting, tuple):
        yield from ((f"[{k}]", v) for k, v in enumerate(setting))
    else:
        yield "", setting


def _unknown(name: str, method: MethodSpec, source: str, where: str) -> None:
    known = [p.name for p in method.params]
    if name in _HARMLESS:
        warnings.warn(
            f"{source}: {where}.{name} does nothing for merge method '{method.name}'; remove it", stacklevel=4
        )
        return
    match = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
    others = sorted(m for m, spec in METHODS.items() if any(p.name == name for p in spec.params))
    if match:
        hint = f"did you mean '{match[0]}'?"
    elif others:
        hint = f"'{name}' belongs to {', '.join(others)}; '{method.name}' takes {', '.join(known) or 'no parameters'}"
    else:
        hint = f"'{method.name}' takes {', '.join(known) or 'no parameters'}"
    raise ConfigError(f"{source}: {where}.{name}: merge method '{method.name}' has no parameter '{name}'; {hint}")


def check_parameters(recipe: Recipe, method: MethodSpec, source: str) -> None:
    """Every parameter name is the method's and every value written is valid for it."""
    params = {p.name: p for p in method.params}
    for where, scope, per_model in _scopes(recipe):
        for name, setting in scope.items():
            if name not in params:
                _unknown(name, method, source, where)
                continue
            param = params[name]
            for at, value in _scalars(setting):
                param.validate(value, f"{source}: {where}.{name}{at}: ")
            if per_model and param.scope == Scope.SHARED:
                warnings.warn(
                    f"{source}: {where}.{name}: '{name}' is one value per tensor for '{method.name}', so a "
                    "model's own setting is ignored (as in mergekit); set it in the top-level or slice parameters",
                    stacklevel=3,
                )


def _filters(recipe: Recipe) -> Iterator[tuple[str, str]]:
    for where, scope, _ in _scopes(recipe):
        for name, setting in scope.items():
            conditionals = (setting,) if isinstance(setting, Conditional) else setting
            if isinstance(conditionals, tuple):
                for k, cond in enumerate(conditionals):
                    if isinstance(cond, Conditional) and cond.filter not in (None, "*"):
                        yield f"{where}.{name}[{k}].filter", cond.filter


def check_filters(recipe: Recipe, tensor_names: Iterable[str], source: str) -> None:
    """A filter that matches no tensor of the merge applies nowhere: a typo, or a published recipe
    written for another family (``self_attn`` on GPT-2's ``attn.c_attn``). mergekit runs such
    recipes, so this warns, naming the nearest module name, rather than refusing them."""
    names = set(tensor_names)
    for where, filter_ in _filters(recipe):
        if any(filter_matches(filter_, n) for n in names):
            continue
        parts = sorted({part for n in names for part in n.split(".") if not part.isdigit()})
        match = difflib.get_close_matches(filter_, parts, n=1, cutoff=0.5)
        hint = f"did you mean '{match[0]}'?" if match else f"module names here: {', '.join(parts[:12])}"
        warnings.warn(
            f"{source}: {where} = '{filter_}' matches no tensor of this merge, so its values apply nowhere "
            f"(a filter is a substring of tensor names); {hint}",
            stacklevel=3,
        )
