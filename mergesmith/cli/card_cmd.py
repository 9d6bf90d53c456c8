"""``mergesmith card OUT --eval results.json``: write the "Evaluation results" section of OUT/README.md."""

from __future__ import annotations

from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("card", help="add evaluation results to a model card",
                       description="Write or update the 'Evaluation results' section of OUT/README.md.")
    p.add_argument("out", metavar="OUT", help="model directory whose README.md is the card")
    p.add_argument("--eval", required=True, metavar="RESULTS", help="results JSON from `mergesmith eval --json`")
    p.add_argument("--model", help="which model of the results (default: the one that is OUT, or the only one)")
    p.set_defaults(handler=run)


def _pick(result, out: Path, wanted):
    from mergesmith.errors import InputFormatError

    if wanted is not None:
        return result.model(wanted)
    same = [m for m in result.models if Path(m.model).resolve() == out.resolve()]
    if len(same) == 1 or len(result.models) == 1:
        return (same or list(result.models))[0]
    names = ", ".join(m.model for m in result.models)
    raise InputFormatError(f"the results hold {len(result.models)} models ({names}) and none is {out}; choose one with --model")


def run(args) -> int:
    from mergesmith.errors import InputFormatError
    from mergesmith.eval.results import datasets_line, load_results, metric_rows
    from mergesmith.io.staging import replace_text
    from mergesmith.output.card import eval_section, with_eval_section

    out = Path(args.out)
    if not out.is_dir():
        raise InputFormatError(f"model directory {out} not found; give the directory whose README.md to update")
    result = load_results(args.eval)
    score = _pick(result, out, args.model)
    context = f"{result.context} tokens, stride {result.stride}, dtype {result.dtype}"
    if result.limit:
        context += f" (first {result.limit} windows per text / items per task only)"
    section = eval_section(metric_rows(score), datasets=datasets_line(score), context=context, date=result.date)
    card_path = out / "README.md"
    try:
        card = card_path.read_text(encoding="utf-8") if card_path.is_file() else f"# {out.resolve().name}\n"
    except UnicodeDecodeError:
        raise InputFormatError(f"{card_path} is not UTF-8; re-encode it as UTF-8 or move it aside") from None
    replace_text(card_path, with_eval_section(card, section))
    return 0
