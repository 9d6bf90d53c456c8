"""Optimizers: seeded and reproducible; grid and random cover finite spaces; CMA-ES minimises."""

from __future__ import annotations

import math

import pytest

from mergesmith.errors import ConfigError
from mergesmith.search.derive import branches_of
from mergesmith.search.optimizers import (
    CMAES,
    Grid,
    Random,
    default_optimizer,
    make_optimizer,
)
from mergesmith.search.settings import OptimizerSettings
from mergesmith.search.space import Space

MODELS = [{"model": "base"}, {"model": "a"}, {"model": "b"}]


def ties_space(**params) -> Space:
    return Space(
        tuple(
            branches_of(
                {"merge_method": "ties", "base_model": "base", "models": MODELS, "parameters": params}, "", "space"
            )
        )
    )


def run(optimizer, objective, budget: int) -> list:
    """The driver's loop without models: ask, score, tell, until the budget is spent."""
    seen = []
    while len(seen) < budget:
        asked = optimizer.ask()
        points = asked[: budget - len(seen)]
        if not points:
            break
        seen += points
        if len(points) == len(asked):
            optimizer.tell([objective(p) for p in points])
    return seen


def test_grid_covers_every_choice_then_stops():
    space = ties_space(weight={"choice": [0.2, 0.5, 0.8]}, normalize="search")
    points = run(Grid(space, budget=100, steps=None), lambda p: 0.0, 100)
    assert len(points) == 3 * 2 == space.size()
    assert len(set(points)) == len(points)


def test_grid_steps_fill_the_budget_and_the_budget_cuts_the_grid():
    space = ties_space(weight=0.5, **{"lambda": "search", "density": "search"})
    assert len(run(Grid(space, budget=20, steps=None), lambda p: 0.0, 20)) == 16  # 4 x 4 fits, 5 x 5 does not
    assert len(run(Grid(space, budget=7, steps=3), lambda p: 0.0, 7)) == 7


def test_random_draws_a_finite_space_without_repeats_in_a_seeded_order():
    space = ties_space(weight={"choice": [0.1, 0.2, 0.3, 0.4, 0.5]}, normalize="search")
    first = run(Random(space, budget=8, seed=1), lambda p: 0.0, 8)
    assert len(set(first)) == 8
    assert first == run(Random(space, budget=8, seed=1), lambda p: 0.0, 8)
    assert first != run(Random(space, budget=8, seed=2), lambda p: 0.0, 8)
    assert len(run(Random(space, budget=50, seed=1), lambda p: 0.0, 50)) == space.size() == 10


def quadratic(target: dict):
    """Squared distance of a point's values to ``target`` (by dim label)."""

    def f(point) -> float:
        labels = [d.label for d in SPACE.branches[0].dims]
        return sum((v - target[label]) ** 2 for label, v in zip(labels, point.values))

    return f


SPACE = ties_space(**{"lambda": "search"})  # lambda in [0, 2], a.weight and b.weight in [0, 1]


def test_cma_es_moves_toward_the_minimum_and_repeats_by_seed():
    objective = quadratic({"lambda": 1.6, "a.weight": 0.2, "b.weight": 0.9})
    points = run(CMAES(SPACE, seed=3, popsize=6, sigma=0.25), objective, 60)
    first, last = [objective(p) for p in points[:6]], [objective(p) for p in points[-6:]]
    assert min(last) < min(first) / 10 and sum(last) < sum(first) / 10
    assert points == run(CMAES(SPACE, seed=3, popsize=6, sigma=0.25), objective, 60)
    assert points[:6] != run(CMAES(SPACE, seed=4, popsize=6, sigma=0.25), objective, 6)


def test_cma_es_survives_failed_candidates():
    objective = quadratic({"lambda": 0.5, "a.weight": 0.5, "b.weight": 0.5})
    failing = lambda p: float("inf") if p.values[0] > 1.0 else objective(p)
    values = [failing(p) for p in run(CMAES(SPACE, seed=0, popsize=6, sigma=0.25), failing, 36)]
    first, last = values[:12], values[-12:]
    assert sum(map(math.isinf, first)) == 3 and sum(map(math.isinf, last)) <= 1  # the failing half is left
    assert min(last) < min(first) / 2


def test_defaults_and_refusals():
    assert default_optimizer(SPACE) == "cma"
    choice = ties_space(weight={"choice": [0.1, 0.9]})
    assert default_optimizer(choice) == "random"
    with pytest.raises(ConfigError, match="use optimizer: random or grid"):
        make_optimizer(choice, OptimizerSettings(name="cma"), 10, 0)
