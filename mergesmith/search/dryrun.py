"""``mergesmith search --dry-run``: the space, its genome and an estimate of the time, before any weights load.

The estimate counts the windows the search will score (racing rungs included: every candidate of
a generation on the first rung, the best ``1/eta`` on each next one), the selection and held-out
report, and prices a scored token and a merged parameter at rates measured by
``bench/bench_search.py`` on SmolLM2-135M, one torch thread per worker, on this project's 2-core
machine under load (192 tokens/s at 1.35e8 parameters; 0.73 s per merge). Scoring cost grows with
the parameter count, so the rates are scaled by it; a busier or faster machine moves them.
"""

from __future__ import annotations

import math
import os

from mergesmith.search.optimizers import Grid, Random, make_optimizer
from mergesmith.search.prepare import Prepared, count, describe, space_lines

PARAM_TOKENS_PER_S = 192 * 1.35e8  # per torch thread
BENCH_LOAD = 5.6  # 1-minute load average on the 2 cores when those rates were measured
MERGE_S_PER_PARAM = 0.73 / 1.35e8
WORKER_START_S = 60.0  # reading the inputs and building the resident model (measured 30-230 s)


def _texts(obj) -> int:
    return sum(len(t.texts) for t in obj.terms if t.metric != "accuracy")


def _tokens(obj, windows: int | None) -> int:
    """Scored tokens per text over ``windows`` windows (the first window scores ``context`` of them)."""
    n = 64 if windows is None else windows  # no limit: priced as 64 windows per text
    return obj.context + (n - 1) * obj.stride if n else 0


def _generation_windows(prepared: Prepared, size: int) -> tuple[int, int]:
    """(merges, scored tokens) of one generation of ``size`` candidates through the racing rungs."""
    merges = tokens = 0
    eta = prepared.search.fitness.racing.eta if prepared.search.fitness.racing else 1
    contenders, before = size, 0
    for level, limit in enumerate(prepared.rungs):
        if level:
            contenders = math.ceil(contenders / eta)
        merges += contenders
        tokens += contenders * (_tokens(prepared.objective, limit) - _tokens(prepared.objective, before))
        before = limit
    return merges, tokens * _texts(prepared.objective)


def estimate(prepared: Prepared, budget: int, workers: int, threads: int, seed: int) -> dict:
    optimizer = make_optimizer(prepared.space, prepared.search.optimizer_settings, budget, seed)
    size = max(1, min(budget, len(optimizer.ask())))
    if isinstance(optimizer, (Grid, Random)):  # one ask holds every candidate it will propose
        budget = size
    generations, last = divmod(budget, size)
    merges = tokens = 0
    for n in [size] * generations + ([last] if last else []):
        m, t = _generation_windows(prepared, n)
        merges, tokens = merges + m, tokens + t
    top = prepared.search.report.top if prepared.selection is None else prepared.search.selection.top
    rows = top + len(prepared.search.report.baselines)
    report_tokens = rows * sum(
        _tokens(o, o.limit) * _texts(o) for o in (prepared.selection, prepared.heldout) if o is not None
    )
    rate = PARAM_TOKENS_PER_S * threads / max(prepared.params, 1)
    search_s = (tokens / rate + merges * MERGE_S_PER_PARAM * prepared.params) / workers + WORKER_START_S
    report_s = report_tokens / rate + rows * MERGE_S_PER_PARAM * prepared.params + WORKER_START_S
    return {
        "candidates": budget,
        "generation": size,
        "merges": merges,
        "tokens": tokens,
        "search_s": search_s,
        "report_s": report_s,
    }


def dry_run_text(prepared: Prepared, budget: int, workers: int, threads: int, seed: int) -> str:
    space = prepared.space
    size = space.size()
    dims = sum(len(b.dims) for b in space.branches)
    est = estimate(prepared, budget, workers, threads, seed)
    lines = [
        f"space: {len(space.branches)} branch{'es' if len(space.branches) != 1 else ''}, {count(dims, 'searched value')}; "
        + (f"{size} distinct candidates" if size is not None else "continuous (infinitely many candidates)"),
        "genome:",
        *(f"  {line}" for line in space_lines(space)),
        f"fitness: {describe(prepared.objective)}",
    ]
    if len(prepared.rungs) > 1:
        lines.append(f"racing: rungs of {', '.join(map(str, prepared.rungs))} windows per text")
    if prepared.selection is not None:
        lines.append(f"selection: {describe(prepared.selection)}, best {prepared.search.selection.top} re-scored")
    lines += [
        f"held-out: {describe(prepared.heldout)}",
        f"estimate: {est['candidates']} candidates in generations of {est['generation']}, {est['merges']} merges, "
        f"{est['tokens']:,} scored tokens on {count(workers, 'worker')} × {count(threads, 'thread')}: "
        f"search ≈ {est['search_s'] / 60:.0f} min, report ≈ {est['report_s'] / 60:.0f} min "
        f"({prepared.params / 1e6:.0f}M parameters; rates of bench/bench_search.py on 2 cores at load {BENCH_LOAD})",
    ]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else BENCH_LOAD
    if load > 1.5 * BENCH_LOAD:  # a busier machine: say how much longer it will likely take
        lines.append(f"the load average is {load:.1f} now: expect about {load / BENCH_LOAD:.1f}× as long")
    return "\n".join(lines)
