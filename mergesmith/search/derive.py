"""Space recipes → branches: markers in place of values, checked against and derived from the registry.

A parameter value in the space may be a marker instead of a value:

    search                              the registry's range for the name (``SEARCH_BOUNDS``), or
                                        every value of a bool / literal parameter
    {range: [lo, hi]}                   a float in [lo, hi]
    {range: [lo, hi], gradient: 3}      a gradient of 3 anchors, each in [lo, hi]
    {range: [lo, hi], groups: 3}        one value in [lo, hi] per contiguous third of the layers
                                        (mergekit-evolve's layer_granularity); ``search`` ranges too
    {choice: [a, b, c]}                 one of the listed values

A slice source's ``model`` and ``layer_range`` may be ``{choice: [...]}`` too (layer stacking:
stack.py). ``merge_method: {choice: [linear, ties]}`` makes one branch per method; a parameter that a
method lacks is dropped from that method's branch. A required parameter (``weight``, ``t``)
that the space never sets is searched over the registry's range, per model where it is per
model.
"""

from __future__ import annotations

import copy
import difflib
import json
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import (
    Any,
)

import yaml

from mergesmith.errors import ConfigError
from mergesmith.methods.registry import METHODS, get_method
from mergesmith.methods.spec import MethodSpec, Param, Scope
from mergesmith.search.markers import MARKER, check_spelling, is_marker, marker_dims
from mergesmith.search.space import Branch, Dim, Slot, Space, put
from mergesmith.search.stack import stack_dims


def _model_label(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None:  # a searched model (a stack's choice)
        return "source"
    from mergesmith.config.references import canonical_reference

    try:
        return str(canonical_reference(value))
    except ValueError:
        return str(value)


def _param_mappings(tpl: dict) -> Iterator[tuple[tuple, str, dict]]:
    """(path, label prefix, parameters mapping) of every parameters block in a recipe mapping."""

    def block(owner: dict, path: tuple, prefix: str):
        params = owner.get("parameters")
        if isinstance(params, dict):
            yield path + ("parameters",), prefix, params

    yield from block(tpl, (), "")
    for i, entry in enumerate(tpl.get("models") or ()):
        if isinstance(entry, dict):
            yield from block(entry, ("models", i), _model_label(entry.get("model")) + ".")
    for i, out_slice in enumerate(tpl.get("slices") or ()):
        if isinstance(out_slice, dict):
            yield from block(out_slice, ("slices", i), f"slices[{i}].")
            for j, src in enumerate(out_slice.get("sources") or ()):
                if isinstance(src, dict):
                    yield from block(src, ("slices", i, "sources", j), f"slices[{i}].{_model_label(src.get('model'))}.")


def _param_for(spec: MethodSpec, name: str, methods: Sequence[str], where: str) -> Param | None:
    """The method's parameter; None when only another method of the choice has it (dropped here)."""
    if any(p.name == name for p in spec.params):
        return spec.param(name)
    known = sorted({p.name for m in methods for p in METHODS[m].params})
    if name in known:
        return None
    match = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
    hint = (
        f"did you mean '{match[0]}'?" if match else f"parameters of {', '.join(methods)}: {', '.join(known) or 'none'}"
    )
    raise ConfigError(f"{where}: unknown parameter '{name}'; {hint}")


class _Builder:
    """Collects the dims and slots of one branch while its template is walked."""

    def __init__(self, where: str):
        self.where, self.dims, self.slots = where, [], []

    def add(self, tpl: dict, path: tuple, param: Param, marker: Any, label: str) -> None:
        dims, gradient, groups = marker_dims(param, marker, label, self.where)
        first = len(self.dims)
        self.dims += dims
        self.slots.append(Slot(path, tuple(range(first, first + len(dims))), gradient, groups))
        put(tpl, path, None)

    def setting(self, tpl: dict, path: tuple, param: Param, setting: Any, label: str) -> None:
        check_spelling(setting, param, self.where)
        if is_marker(setting):
            self.add(tpl, path, param, setting, label)
        elif isinstance(setting, dict) and "value" in setting:
            self.setting(tpl, path + ("value",), param, setting["value"], f"{label}{{{setting.get('filter') or '*'}}}")
        elif isinstance(setting, list) and setting and all(isinstance(c, dict) and "value" in c for c in setting):
            for k, cond in enumerate(setting):
                self.setting(tpl, path + (k,), param, cond, label)


def _methods(value: Any, where: str) -> list[str]:
    if isinstance(value, dict) and set(value) == {"choice"} and isinstance(value["choice"], list) and value["choice"]:
        names = list(dict.fromkeys(value["choice"]))
    elif isinstance(value, str) and value != MARKER:
        names = [value]
    else:
        raise ConfigError(f"{where}: merge_method is a method name or {{choice: [linear, ties, ...]}}, got {value!r}")
    for name in names:
        get_method(str(name), f"{where}: merge_method")
    return names


def _auto_required(tpl: dict, spec: MethodSpec, build: _Builder) -> None:
    """Search required parameters the space never sets, over the registry's range."""
    top = tpl.get("parameters") or {}
    for param in spec.params:
        if not param.required or param.search_bounds is None or param.name in top:
            continue
        if param.scope == Scope.SHARED:
            slices = tpl.get("slices") or ()
            if slices and all(param.name in (s.get("parameters") or {}) for s in slices):
                continue
            tpl["parameters"] = tpl.get("parameters") or {}
            build.add(tpl, ("parameters", param.name), param, MARKER, param.name)
            continue
        owners = [(("models", i), e, tpl.get("base_model")) for i, e in enumerate(tpl.get("models") or ())]
        for i, out_slice in enumerate(tpl.get("slices") or ()):
            if param.name not in (out_slice.get("parameters") or {}):
                base = out_slice.get("base_model", tpl.get("base_model"))
                owners += [(("slices", i, "sources", j), s, base) for j, s in enumerate(out_slice.get("sources") or ())]
        for path, owner, base in owners:
            if not isinstance(owner, dict):
                continue  # not a model entry: parsing the candidate recipe reports it
            is_base = base is not None and _model_label(owner.get("model")) == _model_label(base)
            if param.name in (owner.get("parameters") or {}) or (param.scope == Scope.NON_BASE and is_base):
                continue
            owner["parameters"] = owner.get("parameters") or {}
            build.add(
                tpl,
                path + ("parameters", param.name),
                param,
                MARKER,
                f"{_model_label(owner.get('model'))}.{param.name}",
            )


def _short_labels(dims: list[Dim]) -> tuple[Dim, ...]:
    """``../../out/base+adapters/kjv.weight`` → ``base+kjv.weight`` (last path part of each side),
    unless two dims would then read alike."""

    def short(label: str) -> str:
        head, dot, tail = label.rpartition(".")
        if not dot or "/" not in head:
            return label
        return "+".join(Path(part).name or part for part in head.split("+")) + "." + tail

    labels = [short(d.label) for d in dims]
    if len(set(labels)) < len(labels):
        return tuple(dims)
    return tuple(replace(d, label=label) for d, label in zip(dims, labels))


def branches_of(data: Any, name: str, where: str) -> list[Branch]:
    """One branch per method of a space recipe mapping."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: a recipe is a mapping with 'merge_method', got {type(data).__name__}")
    methods = _methods(data.get("merge_method"), where)
    out = []
    for method in methods:
        spec, tpl, build = METHODS[method], copy.deepcopy(data), _Builder(where)
        tpl["merge_method"] = method
        stack_dims(tpl, build.dims, build.slots, where)
        for path, prefix, params in list(_param_mappings(tpl)):
            for pname in list(params):
                param = _param_for(spec, pname, methods, f"{where}: {'.'.join(map(str, path))}")
                if param is None:
                    del params[pname]
                else:
                    build.setting(tpl, path + (pname,), param, params[pname], prefix + pname)
        _auto_required(tpl, spec, build)
        try:
            template = json.dumps(tpl)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: the recipe holds a value that is not plain YAML data ({exc})") from None
        label = name if len(methods) == 1 else f"{name}/{method}" if name else method
        out.append(Branch(label or method, method, template, _short_labels(build.dims), tuple(build.slots)))
    return out


def build_space(recipe: dict | None, candidates: Sequence[str | dict] | None, base_dir: Path, source: str) -> Space:
    """The space of a search file: its ``recipe`` with markers, or its ``candidates`` pool."""
    if recipe is not None:
        return Space(tuple(branches_of(recipe, "", f"{source}: recipe")))
    branches: list[Branch] = []
    for i, entry in enumerate(candidates or ()):
        where = f"{source}: candidates[{i}]"
        if isinstance(entry, str):
            path = (base_dir / entry).resolve()
            if not path.is_file():
                raise ConfigError(f"{where}: recipe file {path} not found")
            try:
                entry, name = yaml.safe_load(path.read_text(encoding="utf-8")), path.stem
            except yaml.YAMLError as exc:
                raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
            except UnicodeDecodeError:
                raise ConfigError(f"{path}: not UTF-8 text; save the recipe as UTF-8") from None
        else:
            name = f"candidate{i}"
        branches += branches_of(entry, name, where)
    names = [b.name for b in branches]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate is not None:
        raise ConfigError(
            f"{source}: two candidates are both named '{duplicate}'; give the recipe files distinct names"
        )
    return Space(tuple(branches))
