"""``mergesmith plan RECIPE``: every output tensor with its inputs, method and resolved parameters."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("plan", help="print what a merge would do, without doing it")
    p.add_argument("recipe", help="YAML recipe (mergekit format)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--seed", type=int, default=0, help="seed recorded in the plan")
    p.add_argument("--allow-pickle", action="store_true", help="read pickle .bin checkpoints (they can run code)")
    p.set_defaults(handler=run)


def run(args) -> int:
    from mergesmith.api import plan
    from mergesmith.plan.render import render_json, render_text

    the_plan = plan(args.recipe, seed=args.seed, allow_pickle=args.allow_pickle)
    print(render_json(the_plan) if args.json else render_text(the_plan))
    return 0
