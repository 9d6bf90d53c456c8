"""``search``: score candidates from an optimizer on a backend, record each, write the winner.

    OUT/search.sqlite   every candidate, committed as soon as it is scored
    OUT/fitness.png     fitness over evaluations
    OUT/winner/         the best recipe as a normal merge output; its card has a search section

Everything is checked before a worker starts: the file, every branch of the space (planned
against the inputs' headers), the texts, the fitness / held-out split.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from mergesmith.api import model_keys, plan
from mergesmith.config.load import parse_recipe
from mergesmith.errors import ConfigError, MergesmithError, OutputExistsError
from mergesmith.eval.data import read_text
from mergesmith.io.resolve import open_headers
from mergesmith.io.staging import clear_stale, parent_lock
from mergesmith.plan.planner import build_plan
from mergesmith.search.backends import make_backend
from mergesmith.search.derive import build_space
from mergesmith.search.final import PLOT_FILE, WINNER_DIR, finish, stored_report
from mergesmith.search.fitness import Objective, nll_objective, objective
from mergesmith.search.optimizers import default_optimizer, make_optimizer
from mergesmith.search.report import ranked
from mergesmith.search.resident import Setup
from mergesmith.search.settings import (
    SearchFile,
    load_search_file,
    report_texts,
    resolve_path,
)
from mergesmith.search.space import Space
from mergesmith.search.store import FILE_NAME, Record, ReportRow, Store

# What a resume must share with the search it continues (the budget and workers may change).
RESUME_KEYS = ("fingerprint", "seed", "optimizer")


@dataclass(frozen=True)
class Prepared:
    search: SearchFile
    source: str
    base_dir: Path
    space: Space
    objective: Objective
    heldout: Objective
    keys: tuple[str, ...]


@dataclass(frozen=True)
class SearchResult:
    out: Path
    records: tuple[Record, ...]  # in evaluation order
    settings: dict
    report: tuple[ReportRow, ...] = ()  # held-out scores of the best candidates and the baselines
    report_stored: bool = False  # the report is the one stored by the finished search resumed

    @property
    def leaderboard(self) -> list[Record]:
        return ranked(self.records)


def _check_branches(space: Space, base_dir: Path, source: str, seed: int, allow_pickle: bool) -> tuple[str, ...]:
    """Plan every branch at its center against the inputs' headers; the inputs of all branches."""
    recipes = [
        parse_recipe(space.recipe(space.center(b)), f"{source}: {branch.name}")
        for b, branch in enumerate(space.branches)
    ]
    keys = list(dict.fromkeys(k for r in recipes for k in model_keys(r)))
    models = open_headers(keys, base_dir=base_dir, allow_pickle=allow_pickle)  # no weights yet
    for recipe, branch in zip(recipes, space.branches):
        build_plan(recipe, models, source=f"{source}: {branch.name}", seed=seed)
    return tuple(keys)


def prepare(search_file, *, seed: int = 0, allow_pickle: bool = False) -> Prepared:
    search, base_dir = load_search_file(search_file)
    source = str(search_file)
    space = build_space(search.recipe, search.candidates, base_dir, source)
    heldout_paths = report_texts(search, base_dir)
    obj = objective(search.fitness, base_dir)
    heldout = nll_objective(tuple(read_text(p) for p in heldout_paths), obj, search.report.limit)
    keys = _check_branches(space, base_dir, source, seed, allow_pickle)
    for name in search.report.baselines:
        plan(resolve_path(name, base_dir), seed=seed, allow_pickle=allow_pickle)  # found and plannable
    return Prepared(search, source, base_dir, space, obj, heldout, keys)


def _describe(obj: Objective) -> str:
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
    limit = "all windows" if obj.limit is None else f"first {_count(obj.limit, 'window')} per text / items per task"
    return f"{terms} (context {obj.context}, stride {obj.stride}, {limit})"


def _space_lines(space: Space) -> list[str]:
    def dim(d) -> str:
        return (
            f"{d.label} in {{{', '.join(map(str, d.options))}}}"
            if d.is_choice
            else f"{d.label} in [{d.low:g}, {d.high:g}]"
        )

    return [f"{b.name}: " + (", ".join(dim(d) for d in b.dims) or "as written") for b in space.branches]


def _fingerprint(p: Prepared) -> str:
    data = {
        "space": [asdict(b) for b in p.space.branches],
        "objective": {**asdict(p.objective), "terms": [_term_key(t) for t in p.objective.terms]},
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def _term_key(term) -> dict:
    texts = [hashlib.sha256(t.text.encode()).hexdigest() for t in term.texts]
    task = None if term.task is None else hashlib.sha256(repr(term.task.items).encode()).hexdigest()
    return {
        "metric": term.metric,
        "weight": term.weight,
        "texts": texts,
        "ref": term.ref,
        "task": task,
        "fewshot": term.fewshot,
    }


def _threads(workers: int) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // workers)


def _open_store(out: Path, resume: bool, force: bool) -> Store:
    """The search database of ``out``, after clearing what killed runs left: a hidden ``.OUT.old-PID``
    beside it (a --force replacement cut short), staged winner/ and plot inside it."""
    out = out.absolute()
    if out.parent.is_dir():
        with parent_lock(out):
            clear_stale(out)
    if resume:
        store = Store.open_existing(out / FILE_NAME)
    else:
        _remove_old(out, force)
        out.mkdir(parents=True)
        store = Store(out / FILE_NAME)
    try:
        for name in (WINNER_DIR, PLOT_FILE):
            with parent_lock(out / name):
                clear_stale(out / name)
    except BaseException:
        store.close()
        raise
    return store


def _remove_old(out: Path, force: bool) -> None:
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir() or out.is_symlink():
        raise OutputExistsError(f"{out} exists and is not a directory; remove it or pick a new search directory")
    if not force:
        raise OutputExistsError(
            f"{out} exists; set resume (--resume) to continue its search, force (--force) to replace it, or pick a new directory"
        )
    if not (out / FILE_NAME).is_file() and any(out.iterdir()):
        # --force replaces an earlier search, never a directory that holds something else
        raise OutputExistsError(f"{out} exists and holds no {FILE_NAME}; it is not a search directory: pick a new one")
    if (out / FILE_NAME).is_file():
        Store.check_free(out / FILE_NAME)
    # Renamed first: a kill while deleting leaves a hidden sibling that the next run clears,
    # never a half-deleted directory under the search's name.
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    os.rename(out, old)
    shutil.rmtree(old)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' if n != 1 else ''}"


def _settings(prepared: Prepared, search_file, seed: int, budget: int, backend: str) -> dict:
    """What the search database and the card record about how the search was run."""
    settings = prepared.search.optimizer_settings
    return {
        "search_file": str(search_file),
        "fingerprint": _fingerprint(prepared),
        "seed": seed,
        "budget": budget,
        "optimizer": settings.name if settings else default_optimizer(prepared.space),
        "backend": backend,
        "fitness": _describe(prepared.objective),
        "heldout": _describe(prepared.heldout),
        "space": _space_lines(prepared.space),
        "base_dir": str(prepared.base_dir),
    }


def _backend_text(workers: int, threads: int, use_ray: bool, ray_address: str | None) -> str:
    backend = (
        (f"Ray at {ray_address}" if ray_address else "a local Ray instance")
        if use_ray
        else "local processes"
        if workers > 1
        else "the search process"
    )
    return f"{_count(workers, 'worker')} on {backend}, {_count(threads, 'torch thread')} each"


OnResult = Callable[[Record, int], None]  # (record, candidates scored so far)
OnStatus = Callable[[str], None]  # what the search does now, where no candidate is scored


def search(
    search_file,
    out,
    *,
    budget: int,
    seed: int = 0,
    workers: int = 1,
    use_ray: bool = False,
    ray_address: str | None = None,
    threads: int | None = None,
    resume: bool = False,
    force: bool = False,
    allow_pickle: bool = False,
    on_result: OnResult | None = None,
    write_winner: bool = True,
    redo_report: bool = False,
    on_status: OnStatus | None = None,
) -> SearchResult:
    """Run (or with ``resume`` continue) the search of ``search_file`` into ``out``.

    ``threads`` is torch's thread count in each worker (default: this machine's cores / workers);
    it is fixed explicitly because a different count may change matmul rounding, so two runs
    give the same leaderboard when seed, budget and threads agree, whatever the backend. The
    final report uses as many threads: on a busy machine more threads were slower, not faster.
    Resuming a finished search scores nothing: its stored report and winner stand, unless
    ``redo_report`` or they no longer match (another ``report:`` section, an edited baseline).
    """
    on_status = on_status or (lambda _: None)
    threads = _threads(workers) if threads is None else threads
    for name, value, low in (
        ("--budget", budget, 1),
        ("--seed", seed, 0),
        ("--workers", workers, 1),
        ("--threads", threads, 1),
    ):
        if value < low:
            raise ConfigError(f"{name} {value} is out of range; it must be at least {low}")
    on_status(f"checking {search_file}: every branch planned against the inputs' headers")
    prepared = prepare(search_file, seed=seed, allow_pickle=allow_pickle)
    out = Path(out)
    settings = _settings(prepared, search_file, seed, budget, _backend_text(workers, threads, use_ray, ray_address))
    store = _open_store(out, resume, force)
    try:
        if resume:
            store.check_settings(settings, RESUME_KEYS)
        store.save_settings(settings)
        setup = Setup(
            prepared.source,
            str(prepared.base_dir),
            prepared.keys,
            json.dumps(prepared.space.recipe(prepared.space.center(0))),
            prepared.objective,
            seed,
            threads,
            allow_pickle,
        )
        optimizer = make_optimizer(prepared.space, prepared.search.optimizer_settings, budget, seed)
        records, scored = _loop(
            prepared.space,
            optimizer,
            store,
            budget,
            lambda: make_backend(setup, workers, ray_address, use_ray),
            on_result,
        )
        if not any(r.error is None for r in records):
            raise MergesmithError(f"every candidate failed to merge; the first: {records[0].error}")
        kept = (
            None
            if scored or redo_report or not write_winner
            else stored_report(prepared, store, records, settings, out)
        )
        rows = kept or (
            finish(prepared, store, records, settings, out, seed, threads, on_status) if write_winner else []
        )
    finally:
        store.close()
    return SearchResult(out, tuple(records), settings, tuple(rows), report_stored=kept is not None)


def _loop(space: Space, optimizer, store: Store, budget: int, new_backend, on_result) -> tuple[list[Record], int]:
    """Ask, score what the store does not hold yet, tell; the store is the search's memory.
    The records of the budget, and how many of them were scored now."""
    done, index, backend, scored = store.records(), 0, None, 0
    try:
        while index < budget:
            asked = optimizer.ask()
            points = asked[: budget - index]
            if not points:
                break
            pending, meta = [], {}
            for i, point in enumerate(points, start=index):
                meta[i] = (space.params(point), space.recipe(point))
                if i in done and done[i].params != meta[i][0]:
                    raise ConfigError(
                        f"{store.path}: candidate #{i} was {done[i].params}, the optimizer now proposes "
                        f"{meta[i][0]}; the search cannot be resumed: start a new one"
                    )
                if i not in done:
                    pending.append((i, meta[i][1]))
            if pending:
                backend = backend or new_backend()
                for i, outcome in backend.run(pending):
                    done[i] = Record(
                        i, *meta[i], outcome.fitness, outcome.details, outcome.seconds, outcome.worker, outcome.error
                    )
                    store.add(done[i])
                    scored += 1
                    if on_result is not None:
                        on_result(done[i], sum(1 for k in done if k < budget))
            if len(points) == len(asked):  # a generation cut short by the budget is the last one
                optimizer.tell([done[i].fitness for i in range(index, index + len(points))])
            index += len(points)
    finally:
        if backend is not None:
            backend.close()
    return [done[i] for i in range(index)], scored
