"""The model card: front matter, then Merge Details → Merge Method → Models Merged → Configuration,
and (after `mergesmith card --eval`) Evaluation results."""

from __future__ import annotations

import re
from typing import Optional, Sequence

import yaml

from mergesmith.config.schema import Recipe
from mergesmith.methods.registry import METHODS


def _method_md(name: str) -> str:
    spec = METHODS.get(name)
    if spec is None:
        return name
    return f"[{spec.pretty_name}]({spec.reference})" if spec.reference else spec.pretty_name


def model_card(recipe: Recipe, recipe_yaml: str, name: str) -> str:
    base = recipe.base_model if recipe.merge_method != "slerp" else None
    models = [m for m in recipe.referenced_models() if m != base]
    front = {"base_model": list(recipe.referenced_models()), "library_name": "transformers", "tags": ["merge", "mergesmith"]}
    base_text = f" using {base} as a base" if base else ""
    bullets = "\n".join(f"* {m}" for m in models)
    return (
        f"---\n{yaml.safe_dump(front, sort_keys=False)}---\n"
        f"# {name}\n\n"
        "This is a merge of pre-trained language models created with mergesmith.\n\n"
        "## Merge Details\n\n"
        "### Merge Method\n\n"
        f"This model was merged using the {_method_md(recipe.merge_method)} merge method{base_text}.\n\n"
        "### Models Merged\n\n"
        f"The following models were included in the merge:\n{bullets}\n\n"
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


def _section_span(card: str) -> Optional[tuple[int, int]]:
    """Start and end of an existing evaluation section: from its heading to the next '## ' heading."""
    if card.startswith(EVAL_HEADING + "\n"):
        start = 0
    else:
        found = card.find("\n" + EVAL_HEADING + "\n")
        if found < 0:
            return None
        start = found + 1
    end = card.find("\n## ", start + len(EVAL_HEADING))
    return start, len(card) if end < 0 else end + 1


def with_eval_section(card: str, section: str) -> str:
    """``card`` with its evaluation section replaced by ``section``, or ``section`` appended."""
    span = _section_span(card)
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
