"""The search loop: ask the optimizer, score each generation in rungs (successive halving), tell.

Rung 0 scores every candidate of a generation on the first ``rungs[0]`` windows of each fitness
text; the best ``ceil(n / eta)`` of a rung (all scored on the same windows, so comparable) go on
to the next rung's windows, scoring only the windows they lack. The optimizer is told the rung-0
fitness of the whole generation (the one number every candidate has on the same windows); the
leaderboard ranks by the highest rung reached, then by fitness there. Without racing there is
one rung, ``fitness.limit``, and this is the plain ask / score / tell loop.

The store is the loop's memory: a resumed search replays the optimizer against stored
candidates and scores only what is missing (a candidate, or a rung of it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from mergesmith.errors import ConfigError
from mergesmith.search.fitness import WINDOWS, Objective, combine
from mergesmith.search.space import Space
from mergesmith.search.store import Record, Store

RUNG, BY_RUNG = "rung", "fitness_by_rung"


def rung_of(record: Record) -> int:
    return record.details.get(RUNG, 0)


def first_fitness(record: Record) -> float:
    """The rung-0 fitness: the value the optimizer was told."""
    by_rung = record.details.get(BY_RUNG)
    return by_rung[0] if by_rung else record.fitness


def _merged(old: Record | None, raw: dict) -> dict:
    """Windows scored before (earlier rungs) followed by the new ones; accuracy values kept."""
    if old is None:
        return raw
    before = old.details.get(WINDOWS, {})
    return {**before, **{k: before.get(k, []) + v for k, v in raw.items()}}


class Loop:
    def __init__(
        self,
        space: Space,
        store: Store,
        obj: Objective,
        rungs: Sequence[int | None],
        eta: int,
        new_backend: Callable,
        on_result: Callable | None,
    ):
        self.space, self.store, self.obj, self.rungs, self.eta = space, store, obj, tuple(rungs), eta
        self.new_backend, self.on_result = new_backend, on_result
        self.done, self.backend, self.scored, self.budget = store.records(), None, 0, 0

    def run(self, optimizer, budget: int) -> tuple[list[Record], int]:
        """The records of the budget, in evaluation order, and how many scorings happened now.
        The backend stays up for the report: ``close`` it."""
        index, self.budget = 0, budget
        while index < budget:
            asked = optimizer.ask()
            points = asked[: budget - index]
            if not points:
                break
            meta = self._meta(points, index)
            self._generation(meta)
            if len(points) == len(asked):  # a generation cut short by the budget is the last one
                optimizer.tell([first_fitness(self.done[i]) for i in meta])
            index += len(points)
        return [self.done[i] for i in range(index)], self.scored

    def workers(self):
        """The backend the candidates were scored on (started now if none was needed yet): the report runs there."""
        self.backend = self.backend or self.new_backend()
        return self.backend

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()
            self.backend = None

    def _meta(self, points, index: int) -> dict[int, tuple[dict, dict]]:
        meta = {}
        for i, point in enumerate(points, start=index):
            meta[i] = (self.space.params(point), self.space.recipe(point))
            if i in self.done and self.done[i].params != meta[i][0]:
                raise ConfigError(
                    f"{self.store.path}: candidate #{i} was {self.done[i].params}, the optimizer now proposes "
                    f"{meta[i][0]}; the search cannot be resumed: start a new one"
                )
        return meta

    def _generation(self, meta: dict) -> None:
        contenders = list(meta)
        for level, limit in enumerate(self.rungs):
            if level:
                # By the fitness on the previous rung's windows (what a resumed record holds past it too)
                alive = [i for i in contenders if math.isfinite(self.done[i].fitness)]
                alive.sort(key=lambda i: (self.done[i].details[BY_RUNG][level - 1], i))
                contenders = alive[: math.ceil(len(contenders) / self.eta)]
            skip = self.rungs[level - 1] if level else 0
            pending = [
                (i, "evaluate", (meta[i][1], skip, limit))
                for i in contenders
                if i not in self.done or (rung_of(self.done[i]) < level and self.done[i].error is None)
            ]
            if pending:
                self._score(pending, meta, level)

    def _score(self, pending: list, meta: dict, level: int) -> None:
        self.backend = self.backend or self.new_backend()
        for i, outcome in self.backend.run(pending):
            old = self.done.get(i) if level else None
            if outcome.error is not None:
                record = Record(i, *meta[i], math.inf, {}, outcome.seconds, outcome.worker, outcome.error)
            else:
                windows = _merged(old, outcome.details[WINDOWS])
                fitness, details = combine(self.obj, windows)
                by_rung = (old.details.get(BY_RUNG, [old.fitness]) if old else []) + [fitness]
                seconds = outcome.seconds + (old.seconds if old else 0.0)
                details = {**details, RUNG: level, BY_RUNG: by_rung, WINDOWS: windows}
                record = Record(i, *meta[i], fitness, details, seconds, outcome.worker)
            self.done[i] = record
            self.store.add(record)
            self.scored += 1
            if self.on_result is not None:
                self.on_result(record, sum(1 for k in self.done if k < self.budget))
