"""``mergesmith inspect``: models compared tensor by tensor, or a recipe's per-layer parameters.

    mergesmith inspect MODEL MODEL... [--base BASE] [--json FILE] [--plot FILE.png]
    mergesmith inspect RECIPE.yml [--json FILE] [--plot FILE.png]

One argument ending in .yml or .yaml is a recipe; anything else is a model reference.
"""

from __future__ import annotations

from mergesmith.cli.events import Log

RECIPE_SUFFIXES = (".yml", ".yaml")
DEFAULT_TOP_K = 8


def add_parser(sub) -> None:
    p = sub.add_parser(
        "inspect",
        help="compare models tensor by tensor, or plot a recipe's per-layer parameters",
        description="Compare models tensor by tensor, or show a recipe's parameters per layer.",
        epilog="Models are written as in a recipe: directories, .gguf files, base+adapter, Hub ids. Per tensor: "
        "cosine similarity, relative L2 distance and, with --base (deltas model - base), delta norms, sign "
        "agreement and top-k energy, summed up per layer and module type. One argument ending in .yml/.yaml is "
        "a recipe: planned from headers (no tensor read), its resolved parameters shown per layer and filter, "
        "and for a layer stack which source layer lands where.",
    )
    p.add_argument(
        "inputs", nargs="+", metavar="MODEL|RECIPE", help="two or more models (one with --base), or one recipe"
    )
    p.add_argument(
        "--base", help="base model: compare the deltas model - base, and add delta norms, sign agreement, top-k energy"
    )
    p.add_argument("--json", metavar="FILE", help="write every number as JSON")
    p.add_argument(
        "--plot",
        metavar="FILE.png",
        help="models: heatmap per model pair; recipe: parameters per layer (needs matplotlib)",
    )
    p.add_argument(
        "--top-k", type=int, metavar="K", help=f"singular directions for the energy share (default {DEFAULT_TOP_K})"
    )
    p.add_argument("--device", help="where the arithmetic runs: cpu (default), cuda[:N]")
    p.add_argument("--allow-pickle", action="store_true", help="read pickle .bin checkpoints (they can run code)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(handler=run)


def is_recipe(inputs) -> bool:
    return len(inputs) == 1 and inputs[0].lower().endswith(RECIPE_SUFFIXES)


def _outputs(args, inputs) -> None:
    from mergesmith.inspect.outputs import check_output

    if args.json:
        check_output(args.json, "--json", inputs=inputs)
    if args.plot:
        check_output(args.plot, "--plot", suffix=".png", inputs=inputs)
        from mergesmith.inspect.plot import require_matplotlib

        require_matplotlib()  # before the work, not after it


def _wrote(args, log: Log) -> None:
    for path in (args.json, args.plot):
        if path:
            log.line(f"wrote {path}")


def _run_recipe(args, log: Log) -> int:
    from mergesmith.api import model_keys, plan, read_recipe
    from mergesmith.errors import ConfigError
    from mergesmith.inspect.plot import plot_schedule
    from mergesmith.inspect.recipe import schedule_of
    from mergesmith.inspect.summary import schedule_text
    from mergesmith.io.resolve import local_paths
    from mergesmith.lineage import is_lineage_file

    given = [
        flag
        for flag, value in (("--base", args.base), ("--top-k", args.top_k), ("--device", args.device))
        if value is not None
    ]
    if given:
        raise ConfigError(f"{given[0]} applies when comparing models, not to a recipe ({args.inputs[0]}); drop it")
    if is_lineage_file(args.inputs[0]):
        return _run_lineage(args, log)
    src = read_recipe(args.inputs[0])
    inputs = [("the recipe", src.name)] + [
        (f"model '{k}'", p) for k in model_keys(src.recipe) for p in local_paths(k, src.base_dir)
    ]
    _outputs(args, inputs)
    schedule = schedule_of(plan(src, allow_pickle=args.allow_pickle), src.recipe, src.name)
    _save(args, schedule.to_dict(), lambda path: plot_schedule(schedule, path))
    _wrote(args, log)
    log.result(None if log.json else schedule_text(schedule), **schedule.to_dict())
    return 0


def _run_lineage(args, log: Log) -> int:
    """A lineage: every stage's schedule, in the order the stages run (stage outputs by name);
    ``--plot FILE.png`` draws the final merge there and each named stage beside it as FILE.<stage>.png."""
    from pathlib import Path

    from mergesmith.inspect.plot import plot_schedule
    from mergesmith.inspect.recipe import schedule_of
    from mergesmith.inspect.summary import schedule_text
    from mergesmith.lineage import plan_lineage, read_lineage

    lineage = read_lineage(args.inputs[0])
    _outputs(args, [("the lineage", Path(args.inputs[0]))])
    plans = plan_lineage(lineage, allow_pickle=args.allow_pickle)
    schedules = [(stage, schedule_of(the_plan, stage.recipe, stage.label)) for stage, the_plan in plans]
    data = {"stages": [{"stage": stage.label, **schedule.to_dict()} for stage, schedule in schedules]}

    def plot(path) -> None:
        path = Path(path)
        for i, (stage, schedule) in enumerate(schedules):
            last = i == len(schedules) - 1
            plot_schedule(schedule, path if last else path.with_name(f"{path.stem}.{stage.label}{path.suffix}"))

    _save(args, data, plot)
    _wrote(args, log)
    text = "\n\n".join(f"## stage {stage.label}\n{schedule_text(schedule)}" for stage, schedule in schedules)
    log.result(None if log.json else text, **data)
    return 0


def _save(args, data: dict, plot) -> None:
    from mergesmith.inspect.outputs import write_json

    if args.json:
        write_json(data, args.json)
    if args.plot:
        plot(args.plot)


def _run_models(args, log: Log) -> int:
    from mergesmith.errors import ConfigError
    from mergesmith.inspect import inspect_models
    from mergesmith.inspect.plot import plot_inspection
    from mergesmith.inspect.summary import summary_text
    from mergesmith.io.resolve import local_paths

    if len(args.inputs) == 1 and args.base is None:
        raise ConfigError(
            f"inspect needs two models, one model and --base, or one recipe ending in .yml/.yaml; "
            f"got only '{args.inputs[0]}'"
        )
    keys = list(args.inputs) + ([args.base] if args.base else [])
    _outputs(args, [(f"model '{k}'", p) for k in keys for p in local_paths(k)])
    result = inspect_models(
        args.inputs,
        args.base,
        top_k=DEFAULT_TOP_K if args.top_k is None else args.top_k,
        device=args.device or "cpu",
        progress=log.progress,
        allow_pickle=args.allow_pickle,
    )
    _save(args, result.to_dict(), lambda path: plot_inspection(result, path))
    _wrote(args, log)
    log.result(None if log.json else summary_text(result), **result.to_dict())
    return 0


def run(args) -> int:
    # main() sets args.log; a parser built on its own (tests, embedding programs) gets a plain one.
    log = getattr(args, "log", None) or Log("inspect", "text", args.quiet)
    return (_run_recipe if is_recipe(args.inputs) else _run_models)(args, log)
