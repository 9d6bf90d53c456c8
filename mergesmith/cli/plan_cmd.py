"""``mergesmith plan RECIPE``: the layer map (which source layers land where, with the resolved
parameters across them); ``--tensors`` every output tensor; ``--json`` every value."""

from __future__ import annotations

from mergesmith.cli import merge_cmd


def add_parser(sub) -> None:
    p = sub.add_parser(
        "plan",
        help="print what a merge would do, without doing it",
        description="Print what a recipe would merge: the layer map with resolved parameters.",
    )
    p.add_argument(
        "recipe", help="YAML recipe (mergekit format), a lineage (several, '---'-separated), or a mergekit-moe config"
    )
    p.add_argument(
        "--tensors", action="store_true", help="one line per output tensor: inputs, method, parameters, dtype"
    )
    p.add_argument("--json", action="store_true", help="print JSON (every tensor, every value) instead of a view")
    p.add_argument("--seed", type=int, default=0, help="seed of random methods recorded in the plan (default 0)")
    p.add_argument("--allow-pickle", action="store_true", help="read pickle .bin checkpoints (they can run code)")
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="plan models whose class is defined by code shipped with them (config.json auto_map), "
        "from their tensor names; the code is copied, never run",
    )
    merge_cmd.add_calibration_cache(p)
    p.set_defaults(handler=run)


def _run_lineage(args) -> int:
    """Stage order first, then each stage's plan; inputs that are stages appear by name."""
    import json

    from mergesmith.lineage import plan_lineage, read_lineage
    from mergesmith.plan.render import plan_to_dict

    lineage = read_lineage(args.recipe)
    plans = plan_lineage(lineage, seed=args.seed, allow_pickle=args.allow_pickle)
    if args.json:
        stages = [
            {
                "stage": stage.label,
                "method": stage.recipe.merge_method,
                "inputs": list(stage.recipe.referenced_models()),
                "plan": plan_to_dict(the_plan),
            }
            for stage, the_plan in plans
        ]
        print(json.dumps({"stages": stages}, indent=1))
        return 0
    lines = [f"# {len(plans)} stages of {lineage.source}, in the order they run; the last one is OUT"]
    lines += [
        f"# {i}. {stage.label}: {stage.recipe.merge_method} of {', '.join(stage.recipe.referenced_models())}"
        for i, (stage, _) in enumerate(plans, 1)
    ]
    for stage, the_plan in plans:
        lines += ["", f"## stage {stage.label}", _view(the_plan, args, stage.label)]
    print("\n".join(lines))
    return 0


def run(args) -> int:
    from mergesmith.api import plan
    from mergesmith.lineage import is_lineage_file
    from mergesmith.moe.stages import read_moe_lineage
    from mergesmith.plan.render import render_json

    if (moe_lineage := read_moe_lineage(args.recipe)) is not None:
        return _run_moe_lineage(args, moe_lineage)
    if is_lineage_file(args.recipe):
        return _run_lineage(args)
    from mergesmith.moe.config import is_moe_file

    if is_moe_file(args.recipe):
        return _run_moe(args)
    the_plan = plan(
        args.recipe, seed=args.seed, allow_pickle=args.allow_pickle, trust_remote_code=args.trust_remote_code
    )
    if the_plan.calibration:
        return _with_calibration(the_plan, args)
    print(render_json(the_plan) if args.json else _view(the_plan, args, args.recipe))
    return 0


def _with_calibration(the_plan, args) -> int:
    """The plan, then what the calibration stage will run: texts, tokens, cache entries."""
    import json

    from mergesmith.api import calibration_status
    from mergesmith.plan.render import plan_to_dict

    status = calibration_status(args.recipe, the_plan, merge_cmd.calibration_cache(args), args.allow_pickle)
    if args.json:
        print(json.dumps({**plan_to_dict(the_plan), "calibration": status}, indent=1))
        return 0
    lines = [_view(the_plan, args, args.recipe)]
    for s in status:
        cached = (
            f"cached in {s['cache']}" if s["cached"] else f"not cached: runs the model layer by layer into {s['cache']}"
        )
        lines.append(f"# calibration: {s['model']} on {', '.join(s['texts'])} ({s['tokens']} tokens; {cached})")
    print("\n".join(lines))
    return 0


def _run_moe(args) -> int:
    """A mergekit-moe config (told by its keys): the experts, routers and where each tensor comes from."""
    from mergesmith.moe.build import plan_file
    from mergesmith.moe.render import render_json, render_text

    the_plan = plan_file(args.recipe, allow_pickle=args.allow_pickle)
    print(render_json(the_plan) if args.json else render_text(the_plan, tensors=args.tensors))
    return 0


def _run_moe_lineage(args, moe_lineage) -> int:
    """Merge stages, then a MoE config naming them: each stage's plan; the MoE is planned from the
    stage outputs when `mergesmith moe` has built them."""
    import json

    from mergesmith.lineage import plan_lineage
    from mergesmith.plan.render import plan_to_dict

    plans = {
        name: plan_lineage(sub, seed=args.seed, allow_pickle=args.allow_pickle)
        for name, sub in moe_lineage.stages.items()
    }
    if args.json:
        print(json.dumps({"stages": {name: [plan_to_dict(p) for _, p in ps] for name, ps in plans.items()}}, indent=1))
        return 0
    lines = [
        f"# {moe_lineage.source}: a MoE config over the merge stages {', '.join(plans)}; `mergesmith moe` builds "
        "each (with the stages it uses) into OUT.stages, then plans and builds the MoE from them"
    ]
    for name, stage_plans in plans.items():
        for stage, the_plan in stage_plans:
            lines += ["", f"## stage {stage.label} (for the MoE's '{name}')", _view(the_plan, args, stage.label)]
    print("\n".join(lines))
    return 0


def _view(the_plan, args, source: str) -> str:
    from mergesmith.plan.layer_map import render_layer_map
    from mergesmith.plan.render import render_text

    return render_text(the_plan) if args.tensors else render_layer_map(the_plan, str(source))
