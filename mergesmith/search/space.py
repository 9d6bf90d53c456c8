"""The search space as data: branches (one recipe template each) of dims, and points in them.

A branch is a recipe with holes (slots); each slot takes one dim's value, or the values of
several dims as a gradient's anchors. Float values are rounded to ``DECIMALS`` so that
candidate recipes stay readable. How a space file becomes branches: ``derive.py``.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

DECIMALS = 4


@dataclass(frozen=True)
class Dim:
    """One searched number or choice; ``label`` says where it sits in the recipe."""

    label: str
    low: float = 0.0
    high: float = 1.0
    options: tuple = ()

    @property
    def is_choice(self) -> bool:
        return bool(self.options)

    def at(self, u: float) -> float:
        """The value at unit coordinate ``u`` in [0, 1]."""
        return round(self.low + (self.high - self.low) * min(1.0, max(0.0, u)), DECIMALS)


@dataclass(frozen=True)
class Slot:
    path: tuple  # where the value goes in the recipe mapping
    dims: tuple[int, ...]  # one dim, or one per gradient anchor or layer group
    gradient: bool
    groups: int = 0  # > 0: one dim per contiguous group of layers (written as a per-layer gradient)


@dataclass(frozen=True)
class Branch:
    name: str
    method: str
    template: str  # the recipe as JSON, each slot holding null
    dims: tuple[Dim, ...]
    slots: tuple[Slot, ...]
    layers: int = 0  # the model's layer count, which layer groups are spread over (set once planned)

    def recipe(self, values: Sequence, layers: int | None = None) -> dict:
        data = json.loads(self.template)
        for slot in self.slots:
            picked = [_plain(values[i]) for i in slot.dims]
            if slot.groups:
                picked = group_anchors(picked, layers or self.layers)
            put(data, slot.path, picked if slot.gradient or slot.groups else picked[0])
        return data


def group_anchors(values: Sequence, layers: int) -> list:
    """One anchor per layer, layer ``i`` taking group ``i·N // layers``'s value: as a gradient over the
    layers (layer ``i`` sits at ``i/(layers-1)``, exactly on anchor ``i``), a piecewise-constant schedule."""
    if layers < 1:
        raise ValueError("layer groups need the model's layer count; plan the branch first")
    return [values[i * len(values) // layers] for i in range(layers)]


@dataclass(frozen=True)
class Point:
    branch: int
    values: tuple  # one value per dim of the branch, in the recipe's units


@dataclass(frozen=True)
class Space:
    branches: tuple[Branch, ...]

    def recipe(self, point: Point) -> dict:
        return self.branches[point.branch].recipe(point.values)

    def with_layers(self, b: int, layers: int) -> Space:
        branches = list(self.branches)
        branches[b] = replace(branches[b], layers=layers)
        return Space(tuple(branches))

    def params(self, point: Point) -> dict:
        """``{"branch": name, label: value, ...}``: what the leaderboard shows."""
        branch = self.branches[point.branch]
        return {"branch": branch.name, **{d.label: _plain(v) for d, v in zip(branch.dims, point.values)}}

    @property
    def continuous(self) -> bool:
        return (
            len(self.branches) == 1
            and bool(self.branches[0].dims)
            and not any(d.is_choice for d in self.branches[0].dims)
        )

    def size(self) -> int | None:
        """How many distinct points, when every dim is a choice; None when a range makes it infinite."""
        total = 0
        for branch in self.branches:
            if any(not d.is_choice for d in branch.dims):
                return None
            count = 1
            for d in branch.dims:
                count *= len(d.options)
            total += count
        return total

    def grid(self, steps: int) -> Iterator[Point]:
        """Every branch's grid: all options of each choice, ``steps`` evenly spaced values per range."""
        for b, branch in enumerate(self.branches):
            axes = [
                d.options if d.is_choice else tuple(d.at(k / (steps - 1)) for k in range(steps)) for d in branch.dims
            ]
            for values in itertools.product(*axes):
                yield Point(b, tuple(values))

    def center(self, b: int) -> Point:
        """The middle of every range, the first of every choice: a point to check a branch with."""
        return Point(b, tuple(d.options[0] if d.is_choice else d.at(0.5) for d in self.branches[b].dims))


def _plain(value):
    """A value as JSON gives it back (a layer range tuple as a list), so stored parameters compare equal."""
    return list(value) if isinstance(value, tuple) else value


def put(data, path: tuple, value) -> None:
    for key in path[:-1]:
        data = data[key]
    data[path[-1]] = value
