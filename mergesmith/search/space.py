"""The search space as data: branches (one recipe template each) of dims, and points in them.

A branch is a recipe with holes (slots); each slot takes one dim's value, or the values of
several dims as a gradient's anchors. Float values are rounded to ``DECIMALS`` so that
candidate recipes stay readable. How a space file becomes branches: ``derive.py``.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

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
    dims: tuple[int, ...]  # one dim, or one per gradient anchor
    gradient: bool


@dataclass(frozen=True)
class Branch:
    name: str
    method: str
    template: str  # the recipe as JSON, each slot holding null
    dims: tuple[Dim, ...]
    slots: tuple[Slot, ...]

    def recipe(self, values: Sequence) -> dict:
        data = json.loads(self.template)
        for slot in self.slots:
            picked = [values[i] for i in slot.dims]
            put(data, slot.path, picked if slot.gradient else picked[0])
        return data


@dataclass(frozen=True)
class Point:
    branch: int
    values: tuple  # one value per dim of the branch, in the recipe's units


@dataclass(frozen=True)
class Space:
    branches: tuple[Branch, ...]

    def recipe(self, point: Point) -> dict:
        return self.branches[point.branch].recipe(point.values)

    def params(self, point: Point) -> dict:
        """``{"branch": name, label: value, ...}``: what the leaderboard shows."""
        branch = self.branches[point.branch]
        return {"branch": branch.name, **{d.label: v for d, v in zip(branch.dims, point.values)}}

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


def put(data, path: tuple, value) -> None:
    for key in path[:-1]:
        data = data[key]
    data[path[-1]] = value
