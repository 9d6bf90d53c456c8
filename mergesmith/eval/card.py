"""Evaluation results into a model card: the "Evaluation results" section of OUT/README.md.

Only OUT's own results go into its card: results of another model are refused, because a card
that shows them says they are OUT's. A model of the results is OUT when its recorded path is OUT's
directory, or, where that path is not on this machine as written (the evaluation ran in another
folder or machine), when its name is OUT's name.

    from mergesmith.eval.card import add_to_card
    add_to_card("out/merged", "results.json")
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from mergesmith.errors import ConfigError, InputFormatError
from mergesmith.eval.results import datasets_line, load_results, metric_rows
from mergesmith.io.staging import replace_text
from mergesmith.output.card import eval_section, with_eval_section
from mergesmith.output.card_names import shown_path


def _is_out(recorded: str, out: Path) -> bool:
    path = Path(recorded).expanduser()
    if path.exists():
        return path.resolve() == out.resolve()
    return path.name == out.resolve().name


def _named(result, wanted: str):
    """The results of ``wanted``: written as in the results, or another path to the same model."""
    for score in result.models:
        if score.model == wanted or (Path(wanted).exists() and _is_out(score.model, Path(wanted))):
            return score
    return result.model(wanted)  # the error listing the models the results hold


def _pick(result, out: Path, wanted, results_path):
    if wanted is not None:
        score = _named(result, wanted)
        if not _is_out(score.model, out):
            raise ConfigError(
                f"model {wanted}: these are the results of {score.model}, not of {out}; a card shows "
                f"only its own model's results: run `mergesmith card {score.model} --eval {results_path}`"
            )
        return score
    same = [m for m in result.models if _is_out(m.model, out)]
    if same:
        return same[0]
    count = f"{len(result.models)} model" + ("s" if len(result.models) != 1 else "")
    names = ", ".join(m.model for m in result.models)
    raise InputFormatError(
        f"the results hold {count} ({names}) and none is {out}; evaluate it first: `mergesmith eval {out} --json FILE`"
    )


def _shown(score):
    """The KL rows name the reference model: by the name a card uses, not the path eval was given."""

    def kl_ref(text):
        return replace(text, kl=replace(text.kl, ref=shown_path(Path(text.kl.ref).absolute()).text))

    return replace(score, texts=tuple(kl_ref(t) if t.kl is not None else t for t in score.texts))


def add_to_card(out, results, model: str | None = None) -> Path:
    """Write the "Evaluation results" section of ``out``/README.md from the results JSON ``results``
    (``mergesmith eval --json``); ``model`` picks one of its models, which must be ``out``. Returns
    the card's path; the card is replaced whole or not at all."""
    out = Path(out)
    if not out.is_dir():
        raise InputFormatError(f"model directory {out} not found; give the directory whose README.md to update")
    card_path = out / "README.md"  # read first: a card that cannot be updated is OUT's problem, whatever the results
    try:
        card = card_path.read_text(encoding="utf-8") if card_path.is_file() else f"# {out.resolve().name}\n"
    except UnicodeDecodeError:
        raise InputFormatError(f"{card_path} is not UTF-8; re-encode it as UTF-8 or move it aside") from None
    result = load_results(results)
    score = _shown(_pick(result, out, model, results))
    context = f"{result.context} tokens, stride {result.stride}, dtype {result.dtype}"
    if result.limit:
        context += f" (first {result.limit} windows per text / items per task only)"
    section = eval_section(metric_rows(score), datasets=datasets_line(score), context=context, date=result.date)
    replace_text(card_path, with_eval_section(card, section))
    return card_path
