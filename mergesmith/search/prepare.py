"""Before any weights load: the search file parsed, the space built and every branch planned against
the inputs' headers, the texts of the three splits read and checked disjoint (``Prepared``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from mergesmith.api import model_keys, plan
from mergesmith.config.load import parse_recipe
from mergesmith.errors import ConfigError
from mergesmith.eval.data import read_text
from mergesmith.io.resolve import open_headers
from mergesmith.plan.planner import build_plan
from mergesmith.search.derive import build_space
from mergesmith.search.fitness import Objective, nll_objective, objective
from mergesmith.search.settings import SearchFile, load_search_file, report_texts, resolve_path
from mergesmith.search.space import Space
from mergesmith.search.splits import check_heldout, splits
from mergesmith.search.stack import model_options


def count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' if n != 1 else ''}"


@dataclass(frozen=True)
class Prepared:
    search: SearchFile
    source: str
    base_dir: Path
    space: Space
    objective: Objective
    heldout: Objective
    keys: tuple[str, ...]
    selection: Objective | None = None  # None: the fitness leaderboard's best wins
    rungs: tuple[int | None, ...] = (None,)  # windows per text at each racing rung
    params: int = 0  # parameters of the first branch's merged model (for time estimates)


def _check_branches(space: Space, base_dir: Path, source: str, seed: int, allow_pickle: bool):
    """Plan every branch at its center against the inputs' headers, its layer groups sized by the
    plan's layer count; the space so sized, and the inputs of all branches."""
    recipes = [
        parse_recipe(branch.recipe(space.center(b).values, layers=1), f"{source}: {branch.name}")
        for b, branch in enumerate(space.branches)
    ]
    keys = list(dict.fromkeys([*(k for r in recipes for k in model_keys(r)), *sorted(model_options(space))]))
    models = open_headers(keys, base_dir=base_dir, allow_pickle=allow_pickle)  # no weights yet
    params = 0
    for b, (recipe, branch) in enumerate(zip(recipes, space.branches)):
        where = f"{source}: {branch.name}"
        planned = build_plan(recipe, models, source=where, seed=seed)
        layers, params = planned.num_layers, params or sum(math.prod(job.shape) for job in planned.jobs)
        if any(slot.groups for slot in branch.slots):
            most = max(slot.groups for slot in branch.slots)
            if most > layers:
                raise ConfigError(f"{where}: {most} layer groups for a model of {layers} layers; use at most {layers}")
            space = space.with_layers(b, layers)
            build_plan(parse_recipe(space.recipe(space.center(b)), where), models, source=where, seed=seed)
    return space, tuple(keys), params


def prepare(search_file, *, seed: int = 0, allow_pickle: bool = False) -> Prepared:
    search, base_dir = load_search_file(search_file)
    source = str(search_file)
    space = build_space(search.recipe, search.candidates, base_dir, source)
    texts = splits(search, base_dir)
    obj = objective(search.fitness, base_dir, texts.fitness)
    if texts.heldout is not None:
        held = texts.heldout
    else:
        held = tuple(read_text(p) for p in report_texts(search, base_dir))
    check_heldout(held, texts)
    heldout = nll_objective(held, obj, search.report.limit)
    selection = None
    if search.selection is not None:
        selection = nll_objective(texts.selection, obj, search.selection.limit)
    space, keys, params = _check_branches(space, base_dir, source, seed, allow_pickle)
    for name in search.report.baselines:
        plan(resolve_path(name, base_dir), seed=seed, allow_pickle=allow_pickle)  # found and plannable
    rungs = search.fitness.rungs()
    return Prepared(search, source, base_dir, space, obj, heldout, keys, selection, rungs, params)


def describe(obj: Objective) -> str:
    terms = " + ".join(
        f"{t.weight:g} × "
        + (
            f"(1 - accuracy) on {t.task.name}, {t.fewshot}-shot"
            if t.metric == "accuracy"
            else f"mean {'NLL' if t.metric == 'nll' else 'KL vs ' + Path(t.ref).name} over "
            + ", ".join(x.name for x in t.texts)
        )
        for t in obj.terms
    )
    limit = "all windows" if obj.limit is None else f"first {count(obj.limit, 'window')} per text / items per task"
    return f"{terms} (context {obj.context}, stride {obj.stride}, {limit})"


def space_lines(space: Space) -> list[str]:
    def dim(d) -> str:
        return (
            f"{d.label} in {{{', '.join(map(str, d.options))}}}"
            if d.is_choice
            else f"{d.label} in [{d.low:g}, {d.high:g}]"
        )

    return [f"{b.name}: " + (", ".join(dim(d) for d in b.dims) or "as written") for b in space.branches]
