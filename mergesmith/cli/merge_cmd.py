"""``mergesmith merge RECIPE OUT``."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("merge", help="run a recipe and write the merged model", description="Run a YAML recipe into OUT.")
    p.add_argument("recipe", help="YAML recipe (mergekit format)")
    p.add_argument("out", help="output directory (appears only when the merge is complete)")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.add_argument("--shard-size", default="5GB", help="largest output shard, e.g. 5GB, 500MiB (default 5GB)")
    p.add_argument("--seed", type=int, default=0, help="seed of random methods (DARE); per tensor, order-independent")
    p.add_argument("--allow-pickle", action="store_true", help="read pickle .bin checkpoints (they can run code)")
    p.add_argument("--workers", type=int, default=2, help="tensors merged at once (default 2); results do not depend on it")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=run)


def run(args) -> int:
    from mergesmith.api import merge
    from mergesmith.execute.memory import release_freed_tensors

    release_freed_tensors()   # process-wide, so it belongs to the program, not the library

    plan = merge(
        args.recipe, args.out, force=args.force, shard_size=args.shard_size, seed=args.seed,
        allow_pickle=args.allow_pickle, progress=not args.quiet, workers=args.workers,
    )
    if not args.quiet:
        print(f"wrote {len(plan.jobs)} tensors, {plan.num_layers} layers to {args.out}")
    return 0
