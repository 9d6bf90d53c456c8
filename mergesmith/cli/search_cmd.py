"""``mergesmith search SPACE.yml OUT --budget N``: find the best recipe in a space, write it as a merge."""

from __future__ import annotations

from mergesmith.cli.events import add_log_format
from mergesmith.cli.export_cmd import THREADS_HELP


def add_parser(sub) -> None:
    p = sub.add_parser(
        "search",
        help="search a space of recipes for the one with the best fitness, write the winner",
        description="Search a space of recipes for the best fitness; write the winner.",
        epilog="Candidates from SPACE.yml (a recipe with ranges or choices, or a list of recipes) are merged in "
        "memory and scored on the fitness texts; each is recorded in OUT/search.sqlite. The best are scored on "
        "held-out texts and the winner is written to OUT/winner as a normal merge output.",
    )
    p.add_argument("space", metavar="SPACE.yml", help="search file: recipe or candidates, optimizer, fitness, report")
    p.add_argument("out", metavar="OUT", help="search directory (search.sqlite, fitness.png, winner/)")
    p.add_argument("--budget", type=int, required=True, help="most candidates to score")
    p.add_argument("--seed", type=int, default=0, help="seed of the optimizer and of random merge methods (default 0)")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="candidates scored at once, each worker holding the inputs once (default 1)",
    )
    p.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help=THREADS_HELP.format(what="torch", note="") + "; part of what makes runs repeat exactly",
    )
    p.add_argument(
        "--ray",
        nargs="?",
        const="",
        default=None,
        metavar="ADDRESS",
        help="score on Ray actors: the cluster at ADDRESS, or a local Ray instance when none is given",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the search in OUT without scoring finished candidates "
        "again; a finished search shows its stored leaderboard at once",
    )
    p.add_argument(
        "--report",
        action="store_true",
        help="with --resume: score the held-out report and write the winner "
        "again even when the stored ones are current",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the space size, the genome, the splits and the estimated time; load no weights, write nothing",
    )
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.add_argument("--allow-pickle", action="store_true", help="read pickle .bin checkpoints (they can run code)")
    p.add_argument("--quiet", action="store_true", help="no progress output (no line per candidate)")
    add_log_format(p)
    p.set_defaults(handler=run)


def _on_result(args):
    """One line (text) or one event (json) per scored candidate."""
    from mergesmith.search.report import params_text, ranked

    log, best, seen = args.log, [float("inf")], {}

    def show(record, scored: int) -> None:
        seen[record.index] = record  # racing: a promoted candidate comes back with more windows
        best[0] = ranked(list(seen.values()))[0].fitness  # the leader on the most windows
        if log.json:
            log.emit(
                "candidate",
                scored=scored,
                budget=args.budget,
                index=record.index,
                fitness=_finite(record.fitness),
                best=_finite(best[0]),
                seconds=record.seconds,
                worker=record.worker,
                params=record.params,
                rung=record.details.get("rung", 0),
                error=record.error,
            )
            return
        fitness = "failed: " + record.error if record.error else f"{record.fitness:.4f}"
        rung = record.details.get("rung", 0)
        fitness += f" (rung {rung})" if rung else ""
        log.line(
            f"[{scored}/{args.budget}] #{record.index} {fitness} (best {best[0]:.4f}, {record.seconds:.1f}s, "
            f"{record.worker}) {params_text(record.params)}"
        )

    return None if args.quiet else show


def _finite(value: float) -> float | None:
    """JSON has no infinity: a failed candidate's fitness is null."""
    import math

    return value if math.isfinite(value) else None


def _result(result) -> dict:
    from dataclasses import asdict

    def record(r) -> dict:
        return {**asdict(r), "fitness": _finite(r.fitness)}

    return {
        "out": str(result.out),
        "winner": str(result.out / "winner"),
        "report_stored": result.report_stored,
        "winner_index": result.winner.index,
        "noise": list(result.noise),
        "leaderboard": [record(r) for r in result.leaderboard],
        "report": [{**asdict(r), "fitness": _finite(r.fitness), "heldout": _finite(r.heldout)} for r in result.report],
    }


def run(args) -> int:
    from mergesmith.errors import ConfigError
    from mergesmith.execute.memory import release_freed_tensors
    from mergesmith.search import search
    from mergesmith.search.report import leaderboard_table

    if args.report and not args.resume:
        raise ConfigError(
            "--report redoes the held-out report of a search being resumed; add --resume "
            "(a new search always scores its report)"
        )
    if args.dry_run:
        return _dry_run(args)
    release_freed_tensors()
    result = search(
        args.space,
        args.out,
        budget=args.budget,
        seed=args.seed,
        workers=args.workers,
        use_ray=args.ray is not None,
        ray_address=args.ray or None,
        threads=args.threads,
        resume=args.resume,
        force=args.force,
        allow_pickle=args.allow_pickle,
        on_result=_on_result(args),
        redo_report=args.report,
        on_status=args.log.status,
    )
    lines = [
        leaderboard_table(result.records, result.report, best=result.winner),
        *result.noise,
        f"winner: #{result.winner.index}, written to {result.out / 'winner'}; plot: {result.out / 'fitness.png'}",
    ]
    if result.report_stored:
        lines.append("# held-out scores and winner as stored by the finished search; --report scores them again")
    args.log.result("\n".join(lines), **_result(result))
    return 0


def _dry_run(args) -> int:
    from mergesmith.errors import ConfigError
    from mergesmith.search.driver import default_threads
    from mergesmith.search.dryrun import dry_run_text
    from mergesmith.search.prepare import prepare

    for flag, value in (("--budget", args.budget), ("--workers", args.workers), ("--threads", args.threads or 1)):
        if value < 1:
            raise ConfigError(f"{flag} {value} is out of range; it must be at least 1")
    prepared = prepare(args.space, seed=args.seed, allow_pickle=args.allow_pickle)
    threads = args.threads or default_threads(args.workers)
    text = dry_run_text(prepared, args.budget, args.workers, threads, args.seed)
    args.log.result(text, dry_run=text)
    return 0
