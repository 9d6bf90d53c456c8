"""The model card: front matter, then Merge Details → Merge Method → Models Merged → Configuration,
and (after `mergesmith card --eval`) Evaluation results."""

from __future__ import annotations

import re
from collections.abc import Sequence

import yaml

from mergesmith.config.references import parse_reference
from mergesmith.config.schema import Recipe
from mergesmith.methods.registry import METHODS


def _method_md(name: str) -> str:
    spec = METHODS.get(name)
    if spec is None:
        return name
    return f"[{spec.pretty_name}]({spec.reference})" if spec.reference else spec.pretty_name


# One stage of a multi-stage lineage, for the card: (stage, merge method, the models it reads).
LineageStep = tuple[str, str, Sequence[str]]


def _model_md(ref: str) -> str:
    """A reference for the card's text: ``base+adapter`` says which LoRA adapter was folded in."""
    parsed = parse_reference(ref)
    return f"{parsed.model} with the LoRA adapter {parsed.lora} merged in" if parsed.lora else str(parsed.model)


def _front_models(refs: Sequence[str], stages: Sequence[str] = ()) -> list[str]:
    """The front matter's ``base_model``: each reference's model, without revision or adapter.

    Hugging Face reads these as model ids (``org/name``), so ``base@rev+adapter`` becomes ``base``;
    the adapter and revision stay in the card's text and recipe. A local path cannot be an id
    (the Hub refuses the card on push), so it is left out here and stays in the recipe.
    """
    paths = (parse_reference(ref).model.path for ref in refs)
    return list(dict.fromkeys(p for p in paths if p not in stages and _could_be_hub_id(p)))


def _could_be_hub_id(path: str) -> bool:
    """``name`` or ``org/name``; not ``/abs``, ``~/x``, ``./x``, ``../x`` or ``a/b/c``."""
    return not path.startswith(("/", "~", ".")) and path.count("/") <= 1


def _lineage_md(steps: Sequence[LineageStep]) -> str:
    if not steps:
        return ""
    rows = "\n".join(
        f"{i}. {stage}: {_method_md(method)} of {', '.join(_model_md(m) for m in inputs)}"
        for i, (stage, method, inputs) in enumerate(steps, 1)
    )
    return f"### Lineage\n\nThis model is the last of {len(steps)} merges, run in this order:\n\n{rows}\n\n"


def model_card(recipe: Recipe, recipe_yaml: str, name: str, lineage: Sequence[LineageStep] = ()) -> str:
    """``lineage``: the stages of a multi-stage recipe, final one last (``recipe`` is that one and
    ``recipe_yaml`` the whole file); the front matter then lists the models the lineage starts from."""
    base = recipe.base_model if recipe.merge_method != "slerp" else None
    models = [m for m in recipe.referenced_models() if m != base]
    if lineage:
        # A stage read with an adapter (``C+adapter``) is still stage C, not a model to list.
        stages = [stage for stage, _, _ in lineage]
        front_models = _front_models([m for _, _, inputs in lineage for m in inputs], stages)
    else:
        front_models = _front_models(recipe.referenced_models())
    front = {"base_model": front_models, "library_name": "transformers", "tags": ["merge", "mergesmith"]}
    base_text = f" using {_model_md(base)} as a base" if base else ""
    bullets = "\n".join(f"* {_model_md(m)}" for m in models)
    return (
        f"---\n{yaml.safe_dump(front, sort_keys=False)}---\n"
        f"# {name}\n\n"
        "This is a merge of pre-trained language models created with mergesmith.\n\n"
        "## Merge Details\n\n"
        "### Merge Method\n\n"
        f"This model was merged using the {_method_md(recipe.merge_method)} merge method{base_text}.\n\n"
        "### Models Merged\n\n"
        f"The following models were included in the merge:\n{bullets}\n\n"
        f"{_lineage_md(lineage)}"
        "### Configuration\n\n"
        "The following YAML configuration was used to produce this model:\n\n"
        f"```yaml\n{recipe_yaml.rstrip()}\n```\n"
    )


def recipe_from_card(card: str) -> str:
    """The YAML recipe embedded in a card (for round-trip checks and for re-running a merge)."""
    start = card.index("```yaml\n") + len("```yaml\n")
    return card[start : card.index("\n```", start)]


# --- Evaluation results ------------------------------------------------------------------------
# Written by `mergesmith card OUT --eval results.json`; the rows come from mergesmith.eval as plain
# (metric, value) strings, so this module stays free of the eval subpackage.

EVAL_HEADING = "## Evaluation results"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def eval_section(rows: Sequence[tuple[str, str]], *, datasets: str, context: str, date: str) -> str:
    """The "Evaluation results" section: where the numbers come from, then a (metric, value) table."""
    table = "\n".join(f"| {_cell(metric)} | {_cell(value)} |" for metric, value in rows)
    return (
        f"{EVAL_HEADING}\n\n"
        f"Evaluated with `mergesmith eval` on {date}.\n\n"
        f"- Data: {datasets}\n"
        f"- Context length: {context}\n\n"
        f"| metric | value |\n|---|---|\n{table}\n"
    )


def _section_span(card: str, heading: str = EVAL_HEADING) -> tuple[int, int] | None:
    """Start and end of an existing ``heading`` section: from its heading to the next '## ' heading."""
    if card.startswith(heading + "\n"):
        start = 0
    else:
        found = card.find("\n" + heading + "\n")
        if found < 0:
            return None
        start = found + 1
    end = card.find("\n## ", start + len(heading))
    return start, len(card) if end < 0 else end + 1


def with_eval_section(card: str, section: str, heading: str = EVAL_HEADING) -> str:
    """``card`` with its ``heading`` (evaluation) section replaced by ``section``, or ``section`` appended."""
    span = _section_span(card, heading)
    if span is None:
        return card.rstrip("\n") + "\n\n" + section
    start, end = span
    rest = card[end:]
    return card[:start] + section + ("\n" + rest if rest else "")


def eval_rows_from_card(card: str) -> list[tuple[str, str]]:
    """The (metric, value) rows of a card's evaluation section (empty when it has none)."""
    span = _section_span(card)
    if span is None:
        return []
    rows = []
    for line in card[span[0] : span[1]].splitlines():
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if len(cells) == 2 and cells != ["metric", "value"] and set(cells[0]) != {"-"}:
            rows.append((cells[0], cells[1]))
    return rows


# --- GGUF ----------------------------------------------------------------------------------------
# Written by `mergesmith export-gguf` (and `merge --gguf`): the files and, with --eval, what each
# quantization costs. The table comes from mergesmith.gguf.report as markdown.

GGUF_HEADING = "## GGUF"


def gguf_section(table_md: str, *, note: str) -> str:
    """The "GGUF" section: how the files were made and measured, then their table."""
    return f"{GGUF_HEADING}\n\n{note}\n\n{table_md.rstrip()}\n"


def with_gguf_section(card: str, section: str) -> str:
    """``card`` with its GGUF section replaced by ``section``, or ``section`` appended."""
    return with_eval_section(card, section, GGUF_HEADING)
