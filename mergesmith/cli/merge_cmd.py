"""``mergesmith merge RECIPE OUT``."""

from __future__ import annotations

from mergesmith.cli import export_cmd


def add_parser(sub) -> None:
    p = sub.add_parser("merge", help="run a recipe and write the merged model", description="Run a YAML recipe into OUT.")
    p.add_argument("recipe", help="YAML recipe (mergekit format), or a lineage: several, '---'-separated")
    p.add_argument("out", help="output directory (appears only when the merge is complete)")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists (lineages: rebuild every stage)")
    p.add_argument("--shard-size", default="5GB", help="largest output shard, e.g. 5GB, 500MiB (default 5GB)")
    p.add_argument("--seed", type=int, default=0, help="seed of random methods (DARE); per tensor, order-independent")
    p.add_argument("--allow-pickle", action="store_true", help="read pickle .bin checkpoints (they can run code)")
    p.add_argument("--workers", type=int, default=2, help="tensors merged at once (default 2); results do not depend on it")
    p.add_argument("--device", default="cpu", help="where the merge arithmetic runs: cpu (default) or cuda[:N]; "
                   "inputs stream through host memory either way")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--intermediate-dir", metavar="DIR", help="lineages (several YAML documents): where named "
                   "stages are built and kept for resuming (default: OUT.stages beside OUT)")
    p.add_argument("--lora-cache", metavar="DIR", help="where base+adapter inputs are merged and reused "
                   "(default $MERGESMITH_CACHE/lora, else ~/.cache/mergesmith/lora)")
    export_cmd.add_merge_options(p)
    p.set_defaults(handler=run)


def _lora_cache(args):
    """The one place the cache location is read from the environment."""
    import os
    from pathlib import Path

    from mergesmith.api import DEFAULT_LORA_CACHE

    if args.lora_cache:
        return Path(args.lora_cache)
    root = os.environ.get("MERGESMITH_CACHE")
    return Path(root) / "lora" if root else DEFAULT_LORA_CACHE


def _run_lineage(args) -> int:
    from mergesmith.lineage import merge_lineage, read_lineage

    def report(outcome) -> None:
        if not args.quiet:
            print(f"stage {outcome.stage}: {outcome.status} ({outcome.tensors} tensors) -> {outcome.path}", flush=True)

    merge_lineage(
        read_lineage(args.recipe), args.out, intermediate_dir=args.intermediate_dir, force=args.force,
        shard_size=args.shard_size, seed=args.seed, allow_pickle=args.allow_pickle, progress=not args.quiet,
        workers=args.workers, on_stage=report, lora_cache=_lora_cache(args), device=args.device,
    )
    return 0


def run(args) -> int:
    import gc

    from mergesmith.api import merge
    from mergesmith.execute.memory import release_freed_tensors

    release_freed_tensors()   # process-wide, so it belongs to the program, not the library
    # Also process-wide: what is alive now (torch and the other modules) lives to the end;
    # frozen, the cycle collector stops walking it on each pass while jobs allocate.
    gc.freeze()
    export_cmd.check_merge_options(args)   # a bad --gguf fails now, not after the merge

    from mergesmith.lineage import is_lineage_file

    if is_lineage_file(args.recipe):
        _run_lineage(args)
        return export_cmd.export_after_merge(args)
    if args.intermediate_dir is not None:
        from mergesmith.errors import ConfigError

        raise ConfigError(f"{args.recipe} is a single recipe; --intermediate-dir applies only to lineages "
                          "(several YAML documents with 'name:')")
    plan = merge(
        args.recipe, args.out, force=args.force, shard_size=args.shard_size, seed=args.seed,
        allow_pickle=args.allow_pickle, progress=not args.quiet, workers=args.workers,
        lora_cache=_lora_cache(args), device=args.device,
    )
    if not args.quiet:
        print(f"wrote {len(plan.jobs)} tensors, {plan.num_layers} layers to {args.out}")
    return export_cmd.export_after_merge(args)
