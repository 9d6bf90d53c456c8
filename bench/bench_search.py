"""Throughput of one search worker on the specialists: candidates per hour, scored tokens per second.

    python bench/bench_search.py                       # examples/specialists/search.yml, 4 candidates
    python bench/bench_search.py --threads 2 --batch-size 8 --candidates 3

Needs the specialists' base (``python examples/specialists/run.py`` builds it). Builds one worker
(:class:`mergesmith.search.resident.Evaluator`: inputs read once, one resident model), then for
each of ``--candidates`` recipes of the search space (seeded random points) times the merge into
the resident model and the scoring of the fitness windows apart, and prints per worker:

    merge s/candidate, score s/candidate, scored tokens/s, candidates/hour

A worker's candidate costs its merge plus its scoring, so candidates/hour = 3600 / (merge + score)
when every candidate is scored on ``limit`` windows per text; with ``fitness.racing`` the bench
also prints the rate of a raced generation (``raced_candidates_per_hour``), from the same merge and
per-window times.
Run at nice 19 on a shared machine; the load average is printed with the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from mergesmith.search.prepare import prepare
from mergesmith.search.resident import Evaluator, Setup
from mergesmith.search.space import Point

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO / "examples" / "specialists" / "search.yml"


def _points(space, n: int, seed: int) -> list[Point]:
    rng = random.Random(seed)
    branch = space.branches[0]
    return [Point(0, tuple(d.options[0] if d.is_choice else d.at(rng.random()) for d in branch.dims)) for _ in range(n)]


def _raced(prepared, merge: float, per_window: float) -> dict:
    """Candidates per hour of one worker under the search file's racing rungs (a generation of the
    optimizer's size: all on the first rung, the best 1/eta on each next), from the measured merge
    time and scoring time per window and text."""
    racing = prepared.search.fitness.racing
    if racing is None:
        return {}
    size = (prepared.search.optimizer_settings.popsize if prepared.search.optimizer_settings else None) or 8
    merges = windows = 0
    contenders, before = size, 0
    for level, limit in enumerate(prepared.rungs):
        contenders = contenders if level == 0 else -(-contenders // racing.eta)
        merges, windows = merges + contenders, windows + contenders * (limit - before)
        before = limit
    seconds = merges * merge + windows * per_window
    return {
        "rungs": list(prepared.rungs),
        "generation": size,
        "raced_candidates_per_hour": round(3600 * size / seconds, 1),
        "raced_windows_per_candidate": round(windows / size, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("search_file", nargs="?", default=str(DEFAULT))
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the worker")
    parser.add_argument("--batch-size", type=int, help="windows per forward pass (default: the search file's)")
    parser.add_argument("--limit", type=int, help="windows per text (default: the search file's)")
    args = parser.parse_args()

    prepared = prepare(args.search_file)
    obj = prepared.objective
    obj = replace(obj, batch_size=args.batch_size or obj.batch_size, limit=args.limit or obj.limit)
    space = prepared.space
    setup = Setup(
        prepared.source,
        str(prepared.base_dir),
        prepared.keys,
        json.dumps(space.recipe(space.center(0))),
        obj,
        0,
        args.threads,
    )
    start = time.perf_counter()
    evaluator = Evaluator(setup, "bench")
    ready = time.perf_counter() - start
    merges, scores, tokens = [], [], 0
    try:
        for point in _points(space, args.candidates, 0):
            t0 = time.perf_counter()
            evaluator.load(evaluator.plan(space.recipe(point)))
            t1 = time.perf_counter()
            evaluator.scorer.score()
            t2 = time.perf_counter()
            merges.append(t1 - t0)
            scores.append(t2 - t1)
            tokens = evaluator.scorer.scored_tokens
    finally:
        evaluator.close()
    merge, score = statistics.median(merges), statistics.median(scores)
    raced = _raced(prepared, merge, score / max(1, obj.limit or 1))
    print(
        json.dumps(
            {
                "search_file": str(Path(args.search_file).name),
                "threads": args.threads,
                "batch_size": obj.batch_size,
                "windows_per_text": obj.limit,
                "context": obj.context,
                "worker_ready_s": round(ready, 1),
                "merge_s": round(merge, 2),
                "score_s": round(score, 2),
                "scored_tokens": tokens,
                "tokens_per_s": round(tokens / score, 1),
                "candidates_per_hour": round(3600 / (merge + score), 1),
                **raced,
                "load_average": os.getloadavg()[0],
                "torch": torch.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
