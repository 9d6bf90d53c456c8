"""Search test helpers: search files over the pico llama family, scored on a few short windows.

Every search here runs with one torch thread per worker: the count is part of what makes two
runs agree bit for bit, and one thread is also the fastest on a busy 2-core machine.
"""

from __future__ import annotations

from pathlib import Path

# Short windows of the bundled fitness texts: a pico candidate scores in a fraction of a second.
FITNESS = {"terms": [{"nll": ["kjv_fitness", "austen_fitness"]}], "context": 32, "limit": 2}
REPORT = {"texts": ["kjv_heldout", "austen_heldout"], "limit": 2, "top": 2}


def ta_space(family: list[Path], **extra) -> dict:
    """Task arithmetic over the family: both weights (derived from the registry) and lambda."""
    base, ft1, ft2 = map(str, family)
    recipe = {
        "merge_method": "task_arithmetic",
        "base_model": base,
        "models": [{"model": base}, {"model": ft1}, {"model": ft2}],
        "parameters": {"lambda": "search"},
    }
    return {"recipe": recipe, "optimizer": {"name": "cma", "popsize": 4}, "fitness": FITNESS, "report": REPORT, **extra}


def board(result) -> list[tuple]:
    """What must agree between runs: every candidate's index, parameters and fitness."""
    return [(r.index, r.params, r.fitness) for r in result.records]
