"""Optimizers over a :class:`Space`: grid and random for pools and choices, CMA-ES for ranges.

Each is an ask/tell loop whose points depend only on the seed and the fitness values told so
far, never on which worker scored what or in which order: so a search is reproducible, gives
the same leaderboard on every backend, and a resumed search can replay its history.

- grid: every branch's grid in order (``steps`` values per range; by default as many as fit
  the budget), stopped at the budget.
- random: a finite space (choices and pools only) in a seeded random order without repeats;
  otherwise points drawn uniformly, the branch first.
- cma: CMA-ES (Hansen's ``cma`` package) on the unit cube of a single branch of ranges, its
  normal samples drawn from a generator seeded by the search seed. Candidates that failed to
  merge are told as the generation's worst value plus one.
"""

from __future__ import annotations

import math
import random
from typing import Protocol

from mergesmith.errors import ConfigError, MergesmithError
from mergesmith.search.settings import OptimizerSettings
from mergesmith.search.space import Point, Space

# Finite spaces up to this size are enumerated and shuffled; larger ones are sampled.
ENUMERATE_LIMIT = 100_000


class Optimizer(Protocol):
    def ask(self) -> list[Point]:
        """The next points to score; empty when the optimizer has nothing more to propose."""

    def tell(self, fitness: list[float]) -> None:
        """Fitness of the points of the last ask, in their order (lower is better)."""


class Grid:
    def __init__(self, space: Space, budget: int, steps: int | None):
        self._points = list(_take(space.grid(steps or _grid_steps(space, budget)), budget))

    def ask(self) -> list[Point]:
        points, self._points = self._points, []
        return points

    def tell(self, fitness: list[float]) -> None:
        pass


def _grid_steps(space: Space, budget: int) -> int:
    """The most values per range (at least 2) whose grid still fits in the budget."""

    def total(steps: int) -> int:
        return sum(math.prod(len(d.options) if d.is_choice else steps for d in b.dims) for b in space.branches)

    steps = 2
    while total(steps + 1) <= budget and total(steps + 1) > total(steps):
        steps += 1
    return steps


def _take(points, n: int):
    for i, point in enumerate(points):
        if i >= n:
            return
        yield point


class Random:
    def __init__(self, space: Space, budget: int, seed: int):
        rng = random.Random(f"mergesmith-search:{seed}")
        size = space.size()
        if size is not None and size <= ENUMERATE_LIMIT:
            points = list(space.grid(2))  # steps are unused: every dim is a choice
            rng.shuffle(points)
            self._points = points[:budget]
        else:
            self._points = [_draw(space, rng) for _ in range(budget)]

    def ask(self) -> list[Point]:
        points, self._points = self._points, []
        return points

    def tell(self, fitness: list[float]) -> None:
        pass


def _draw(space: Space, rng: random.Random) -> Point:
    b = rng.randrange(len(space.branches))
    dims = space.branches[b].dims
    return Point(b, tuple(rng.choice(d.options) if d.is_choice else d.at(rng.random()) for d in dims))


class CMAES:
    def __init__(self, space: Space, seed: int, popsize: int | None, sigma: float):
        try:
            import cma
            import numpy as np
        except ImportError as exc:
            raise MergesmithError(
                f"the cma optimizer needs the cma package ({exc}); pip install 'mergesmith[search]'"
            ) from None
        self._space, self._dims = space, space.branches[0].dims
        rng = np.random.default_rng([seed, 0x6D65726765])
        options = {
            "bounds": [0.0, 1.0],
            "seed": float("nan"),
            "verbose": -9,
            # cma draws from numpy's global generator unless given its own: keep ours, seeded.
            "randn": lambda *shape: rng.standard_normal(shape),
        }
        if popsize is not None:
            options["popsize"] = popsize
        self._es = cma.CMAEvolutionStrategy([0.5] * len(self._dims), sigma, options)
        self._asked: list = []

    def ask(self) -> list[Point]:
        self._asked = self._es.ask()
        return [Point(0, tuple(d.at(float(u)) for d, u in zip(self._dims, x))) for x in self._asked]

    def tell(self, fitness: list[float]) -> None:
        finite = [f for f in fitness if math.isfinite(f)]
        worst = max(finite) + 1.0 if finite else 1e9
        self._es.tell(self._asked, [f if math.isfinite(f) else worst for f in fitness])


def default_optimizer(space: Space) -> str:
    if space.continuous:
        return "cma"
    return "grid" if all(not b.dims for b in space.branches) else "random"


def make_optimizer(space: Space, settings: OptimizerSettings | None, budget: int, seed: int) -> Optimizer:
    settings = settings or OptimizerSettings(name=default_optimizer(space))
    if settings.name == "grid":
        return Grid(space, budget, settings.steps)
    if settings.name == "random":
        return Random(space, budget, seed)
    if not space.continuous:
        raise ConfigError(
            "optimizer cma needs one merge method and only ranges (no choices, no candidate pool); "
            "use optimizer: random or grid for this space"
        )
    return CMAES(space, seed, settings.popsize, settings.sigma)
