"""``mergesmith merge RECIPE OUT``."""

from __future__ import annotations

import sys

from mergesmith.cli import export_cmd
from mergesmith.cli.events import add_log_format


def add_parser(sub) -> None:
    p = sub.add_parser(
        "merge",
        help="run a recipe and write the merged model",
        description="Run a YAML recipe (or a lineage of recipes) into the model directory OUT.",
    )
    p.add_argument("recipe", help="YAML recipe (mergekit format), or a lineage: several, '---'-separated")
    p.add_argument("out", help="output directory (appears only when the merge is complete)")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists (lineages: rebuild every stage)")
    p.add_argument(
        "--shard-size",
        default="5GB",
        metavar="SIZE",
        help="largest output shard, with a unit: 5GB, 500MiB, 1000000B (default 5GB)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of random methods (DARE) (default 0); per tensor, order-independent"
    )
    p.add_argument("--allow-pickle", action="store_true", help="read pickle .bin checkpoints (they can run code)")
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="merge models whose class is defined by code shipped with them (config.json auto_map), "
        "from their tensor names; the code is copied, never run",
    )
    p.add_argument(
        "--workers", type=int, default=2, help="tensors merged at once (default 2); results do not depend on it"
    )
    p.add_argument(
        "--device",
        default="cpu",
        help="where the merge arithmetic runs: cpu (default) or cuda[:N]; inputs stream through host memory either way",
    )
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument(
        "--card-plots",
        action="store_true",
        help="draw the recipe's schedule and the inputs' similarity heatmap into OUT/plots and the card "
        "(reads the inputs once more; needs matplotlib)",
    )
    p.add_argument(
        "--intermediate-dir",
        metavar="DIR",
        help="lineages (several YAML documents): where named "
        "stages are built and kept for resuming (default: OUT.stages beside OUT)",
    )
    p.add_argument(
        "--lora-cache",
        metavar="DIR",
        help="where base+adapter inputs are merged and reused "
        "(default $MERGESMITH_CACHE/lora, else ~/.cache/mergesmith/lora)",
    )
    add_calibration_cache(p)
    export_cmd.add_merge_options(p)
    add_log_format(p)
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


def add_calibration_cache(p) -> None:
    p.add_argument(
        "--calibration-cache",
        metavar="DIR",
        help="where regmean's Gram matrices are computed once and reused "
        "(default $MERGESMITH_CACHE/calibration, else ~/.cache/mergesmith/calibration)",
    )


def calibration_cache(args):
    """The one place the calibration cache location is read from the environment."""
    import os
    from pathlib import Path

    from mergesmith.api import DEFAULT_CALIBRATION_CACHE

    if args.calibration_cache:
        return Path(args.calibration_cache)
    root = os.environ.get("MERGESMITH_CACHE")
    return Path(root) / "calibration" if root else DEFAULT_CALIBRATION_CACHE.expanduser()


def _options(args) -> dict:
    """What every merge of this command (the recipe, or each stage of a lineage) gets."""
    return dict(
        shard_size=args.shard_size,
        seed=args.seed,
        allow_pickle=args.allow_pickle,
        progress=args.log.progress,
        workers=args.workers,
        lora_cache=_lora_cache(args),
        calibration_cache=calibration_cache(args),
        device=args.device,
        status=args.log.status,
    )


def _run_lineage(args) -> list:
    from mergesmith.lineage import merge_lineage, read_lineage

    log = args.log

    def report(outcome) -> None:
        if log.json:
            log.emit(
                "stage", stage=outcome.stage, status=outcome.status, tensors=outcome.tensors, path=str(outcome.path)
            )
        elif not args.quiet:
            log.line(
                f"stage {outcome.stage}: {outcome.status} ({outcome.tensors} tensors) -> {outcome.path}", sys.stdout
            )

    log.status(f"planning every stage of {args.recipe}")
    outcomes = merge_lineage(
        read_lineage(args.recipe),
        args.out,
        intermediate_dir=args.intermediate_dir,
        force=args.force,
        on_stage=report,
        **_options(args),
    )
    return [{"stage": o.stage, "status": o.status, "tensors": o.tensors, "path": str(o.path)} for o in outcomes]


def run(args) -> int:
    import gc

    from mergesmith.api import merge
    from mergesmith.execute.memory import release_freed_tensors

    release_freed_tensors()  # process-wide, so it belongs to the program, not the library
    # Also process-wide: what is alive now (torch and the other modules) lives to the end;
    # frozen, the cycle collector stops walking it on each pass while jobs allocate.
    gc.freeze()
    from mergesmith.io.writer import parse_size

    parse_size(args.shard_size)  # a size without a unit fails now, not after the inputs are read
    export_cmd.check_merge_options(args)  # a bad --gguf fails now, not after the merge
    if args.card_plots:  # a missing matplotlib fails now, not after the merge
        from mergesmith.inspect.plot import require_matplotlib

        require_matplotlib()

    from mergesmith.lineage import is_lineage_file

    if is_lineage_file(args.recipe):
        if args.card_plots:
            from mergesmith.errors import ConfigError

            raise ConfigError(f"{args.recipe} is a lineage; --card-plots draws one recipe: leave it out here")
        if args.trust_remote_code:
            from mergesmith.errors import ConfigError

            raise ConfigError(
                f"{args.recipe} is a lineage; --trust-remote-code applies to single recipes: leave it out"
            )
        stages = _run_lineage(args)
        gguf = export_cmd.export_after_merge(args)
        args.log.result(gguf and gguf["table"], out=args.out, stages=stages, gguf=gguf and gguf["report"])
        return 0
    if args.intermediate_dir is not None:
        from mergesmith.errors import ConfigError

        raise ConfigError(
            f"{args.recipe} is a single recipe; --intermediate-dir applies only to lineages "
            "(several YAML documents with 'name:')"
        )
    plan = merge(args.recipe, args.out, force=args.force, trust_remote_code=args.trust_remote_code, **_options(args))
    if not args.quiet:  # now, not after a --gguf export
        args.log.line(f"wrote {len(plan.jobs)} tensors, {plan.num_layers} layers to {args.out}", sys.stdout)
    if args.card_plots:
        from mergesmith.inspect.card_plots import add_card_plots

        args.log.status("drawing the card's pictures")
        add_card_plots(args.out, args.recipe, allow_pickle=args.allow_pickle, progress=args.log.progress)
    gguf = export_cmd.export_after_merge(args)
    args.log.result(
        gguf and gguf["table"],
        out=args.out,
        tensors=len(plan.jobs),
        layers=plan.num_layers,
        gguf=gguf and gguf["report"],
    )
    return 0
