"""``mergesmith card OUT --eval results.json``: the "Evaluation results" section of OUT/README.md
(mergesmith/eval/card.py does the work)."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser(
        "card",
        help="add evaluation results to a model card",
        description="Write or update the 'Evaluation results' section of OUT/README.md.",
    )
    p.add_argument("out", metavar="OUT", help="model directory whose README.md is the card")
    p.add_argument("--eval", required=True, metavar="RESULTS", help="results JSON from `mergesmith eval --json`")
    p.add_argument("--model", help="which model of the results (default: the one that is OUT); it must be OUT")
    p.set_defaults(handler=run)


def run(args) -> int:
    from mergesmith.eval.card import add_to_card

    add_to_card(args.out, args.eval, args.model)
    return 0
