"""``mergesmith search SPACE.yml OUT --budget N``: find the best recipe in a space, write it as a merge."""

from __future__ import annotations

import sys


def add_parser(sub) -> None:
    p = sub.add_parser(
        "search", help="search a space of recipes for the one with the best fitness, write the winner",
        description="Score candidate recipes from SPACE.yml (a recipe with ranges or choices, or a list of "
        "recipes) on the fitness texts, merged in memory; record each in OUT/search.sqlite, score the best on "
        "held-out texts, and write the winner to OUT/winner as a normal merge output.",
    )
    p.add_argument("space", metavar="SPACE.yml", help="search file: recipe or candidates, optimizer, fitness, report")
    p.add_argument("out", metavar="OUT", help="search directory (search.sqlite, fitness.png, winner/)")
    p.add_argument("--budget", type=int, required=True, help="most candidates to score")
    p.add_argument("--seed", type=int, default=0, help="seed of the optimizer and of random merge methods (default 0)")
    p.add_argument("--workers", type=int, default=1, help="candidates scored at once, each worker holding the inputs once (default 1)")
    p.add_argument("--threads", type=int, help="torch threads per worker (default: cores / workers); part of what makes runs repeat exactly")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="score on Ray actors: the cluster at ADDRESS, or a local Ray instance when none is given")
    p.add_argument("--resume", action="store_true", help="continue the search in OUT without scoring finished candidates again")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.add_argument("--allow-pickle", action="store_true", help="read pickle .bin checkpoints (they can run code)")
    p.add_argument("--quiet", action="store_true", help="no line per candidate")
    p.set_defaults(handler=run)


def run(args) -> int:
    from mergesmith.execute.memory import release_freed_tensors
    from mergesmith.search import search
    from mergesmith.search.report import leaderboard_table, params_text

    release_freed_tensors()
    best = [float("inf")]

    def show(record, scored: int) -> None:
        best[0] = min(best[0], record.fitness)
        fitness = "failed: " + record.error if record.error else f"{record.fitness:.4f}"
        print(f"[{scored}/{args.budget}] #{record.index} {fitness} (best {best[0]:.4f}, {record.seconds:.1f}s, "
              f"{record.worker}) {params_text(record.params)}", file=sys.stderr, flush=True)

    result = search(
        args.space, args.out, budget=args.budget, seed=args.seed, workers=args.workers,
        use_ray=args.ray is not None, ray_address=args.ray or None, threads=args.threads, resume=args.resume, force=args.force,
        allow_pickle=args.allow_pickle, on_result=None if args.quiet else show,
    )
    print(leaderboard_table(result.records, result.report))
    print(f"winner: #{result.leaderboard[0].index}, written to {result.out / 'winner'}; plot: {result.out / 'fitness.png'}")
    return 0
