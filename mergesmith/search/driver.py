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

from mergesmith.api import DEFAULT_CALIBRATION_CACHE
from mergesmith.errors import ConfigError, MergesmithError, OutputExistsError
from mergesmith.io.staging import clear_stale, parent_lock
from mergesmith.search.backends import make_backend
from mergesmith.search.final import PLOT_FILE, WINNER_DIR, finish, stored_report, winner
from mergesmith.search.noise import noise_lines
from mergesmith.search.optimizers import default_optimizer, make_optimizer
from mergesmith.search.prepare import Prepared, count, describe, prepare, space_lines
from mergesmith.search.racing import Loop
from mergesmith.search.report import ranked
from mergesmith.search.resident import Setup
from mergesmith.search.store import FILE_NAME, Record, ReportRow, Store

# What a resume must share with the search it continues (the budget and workers may change).
RESUME_KEYS = ("fingerprint", "seed", "optimizer")


@dataclass(frozen=True)
class SearchResult:
    out: Path
    records: tuple[Record, ...]  # in evaluation order
    settings: dict
    report: tuple[ReportRow, ...] = ()  # held-out scores of the best candidates and the baselines
    report_stored: bool = False  # the report is the one stored by the finished search resumed
    chosen: Record | None = None  # the winner: best on the selection split, else on fitness
    noise: tuple[str, ...] = ()  # the winner's leads with their standard errors, each with its verdict

    @property
    def leaderboard(self) -> list[Record]:
        return ranked(self.records)

    @property
    def winner(self) -> Record:
        return self.chosen or self.leaderboard[0]


def _fingerprint(p: Prepared) -> str:
    data = {
        "space": [_branch_key(b) for b in p.space.branches],
        "objective": {**asdict(p.objective), "terms": [_term_key(t) for t in p.objective.terms]},
    }
    if p.search.fitness.racing is not None:  # absent otherwise: searches from before racing still resume
        data["racing"] = [p.rungs, p.search.fitness.racing.eta]
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def _branch_key(branch) -> dict:
    """The branch as data; layer groups only where there are any, so older searches still resume."""
    data = asdict(branch)
    if not branch.layers:
        del data["layers"]
        for slot in data["slots"]:
            del slot["groups"]
    return data


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


def default_threads(workers: int) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpucount() or 1)
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
        "fitness": describe(prepared.objective),
        "heldout": describe(prepared.heldout),
        **({"selection": describe(prepared.selection)} if prepared.selection else {}),
        **(
            {"racing": f"rungs of {', '.join(map(str, prepared.rungs))} windows per text"}
            if len(prepared.rungs) > 1
            else {}
        ),
        "space": space_lines(prepared.space),
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
    return f"{count(workers, 'worker')} on {backend}, {count(threads, 'torch thread')} each"


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
    calibration_cache=DEFAULT_CALIBRATION_CACHE,
) -> SearchResult:
    """Run (or with ``resume`` continue) the search of ``search_file`` into ``out``.

    ``threads`` is torch's thread count in each worker (default: this machine's cores / workers);
    it is fixed explicitly because a different count may change matmul rounding, so two runs
    give the same leaderboard when seed, budget and threads agree, whatever the backend. The
    selection and held-out report runs on the same workers (no second copy of the inputs).
    Resuming a finished search scores nothing: its stored report and winner stand, unless
    ``redo_report`` or they no longer match (another ``report:`` section, an edited baseline).
    """
    on_status = on_status or (lambda _: None)
    threads = default_threads(workers) if threads is None else threads
    _check_counts(budget=budget, seed=seed, workers=workers, threads=threads)
    on_status(f"checking {search_file}: every branch planned against the inputs' headers")
    prepared = prepare(search_file, seed=seed, allow_pickle=allow_pickle)
    out = Path(out)
    settings = _settings(prepared, search_file, seed, budget, _backend_text(workers, threads, use_ray, ray_address))
    store = _open_store(out, resume, force)
    try:
        if resume:
            store.check_settings(settings, RESUME_KEYS)
        store.save_settings(settings)
        setup = _setup(prepared, seed, threads, allow_pickle, calibration_cache)
        loop = Loop(
            prepared.space,
            store,
            prepared.objective,
            prepared.rungs,
            prepared.search.fitness.racing.eta if prepared.search.fitness.racing else 1,
            lambda: make_backend(setup, workers, ray_address, use_ray),
            on_result,
        )
        try:
            records, scored = _candidates(prepared, loop, budget, seed)
            rows, kept = [], False
            if write_winner:
                rows, kept = _report(
                    prepared,
                    store,
                    loop,
                    records,
                    scored,
                    redo_report,
                    settings,
                    out,
                    seed,
                    on_status,
                    calibration_cache,
                )
        finally:
            loop.close()
    finally:
        store.close()
    best = winner(prepared, records, rows)
    lines = tuple(noise_lines(prepared, records, rows, best))
    return SearchResult(out, tuple(records), settings, tuple(rows), kept, best, lines)


def _check_counts(**counts: int) -> None:
    for name, value in counts.items():
        low = 0 if name == "seed" else 1
        if value < low:
            raise ConfigError(f"--{name} {value} is out of range; it must be at least {low}")


def _setup(prepared: Prepared, seed: int, threads: int, allow_pickle: bool, cache) -> Setup:
    """What every worker is built from, as plain data."""
    probe = json.dumps(prepared.space.recipe(prepared.space.center(0)))
    return Setup(
        prepared.source,
        str(prepared.base_dir),
        prepared.keys,
        probe,
        prepared.objective,
        seed,
        threads,
        allow_pickle,
        prepared.selection,
        prepared.heldout,
        str(cache),
    )


def _candidates(prepared: Prepared, loop: Loop, budget: int, seed: int):
    """The candidates of the budget (in evaluation order) and how many scorings happened now."""
    optimizer = make_optimizer(prepared.space, prepared.search.optimizer_settings, budget, seed)
    records, scored = loop.run(optimizer, budget)
    if not any(r.error is None for r in records):
        raise MergesmithError(f"every candidate failed to merge; the first: {records[0].error}")
    return records, scored


def _report(prepared, store, loop, records, scored, redo, settings, out, seed, on_status, cache):
    """The stored report when a finished search is resumed and it still holds, else a new one (and
    the winner written)."""
    kept = None if scored or redo else stored_report(prepared, store, records, settings, out)
    if kept:
        return kept, True
    return finish(prepared, store, records, settings, out, seed, loop.workers(), on_status, cache), False
