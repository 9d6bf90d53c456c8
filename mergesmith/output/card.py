"""The model card: Hub front matter, then Merge Details → Merge Method → Models Merged → Configuration,
and (after `mergesmith card --eval`) Evaluation results; and the card of a folder of GGUF files.

Models are named as output/card_names.py says: Hub ids where known, else directory or file names,
never a path of the machine that ran the merge. Front matter keys are those the Hub reads
(https://huggingface.co/docs/hub/model-cards): ``base_model`` lists Hub ids only, since the Hub
links each one and a local name is no id; ``base_model_relation`` is said only with a base_model.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import yaml

from mergesmith.config.schema import Recipe
from mergesmith.methods.registry import METHODS
from mergesmith.output.card_names import (
    card_names,
    common_license,
    hub_ids,
    reference_md,
    shown_path,
    shown_recipe,
)

# The PyPI project: `pip install mergesmith` is how a reader gets the tool, and PyPI's page is the
# one address under that name we can vouch for.
MERGESMITH_MD = "[mergesmith](https://pypi.org/project/mergesmith/)"
LLAMA_CPP_MD = "[llama.cpp](https://github.com/ggml-org/llama.cpp)"
LOCAL_NOTE = "Models without a link were read from local files and are named by their directory or file name.\n\n"


def _method_md(name: str) -> str:
    spec = METHODS.get(name)
    if spec is None:
        return name
    return f"[{spec.pretty_name}]({spec.reference})" if spec.reference else spec.pretty_name


# One stage of a multi-stage lineage, for the card: (stage, merge method, the models it reads).
LineageStep = tuple[str, str, Sequence[str]]


def _front(data: dict) -> str:
    return f"---\n{yaml.safe_dump(data, sort_keys=False, allow_unicode=True)}---\n"


def _lineage_md(steps: Sequence[LineageStep], names) -> str:
    if not steps:
        return ""
    rows = "\n".join(
        f"{i}. {stage}: {_method_md(method)} of {', '.join(reference_md(m, names) for m in inputs)}"
        for i, (stage, method, inputs) in enumerate(steps, 1)
    )
    return f"### Lineage\n\nThis model is the last of {len(steps)} merges, run in this order:\n\n{rows}\n\n"


def merge_front(refs: Sequence[str], names, methods: Sequence[str]) -> dict:
    """The Hub front matter of a model made from ``refs``: base models, licence, tags."""
    front: dict = {}
    if bases := hub_ids(refs, names):
        front.update(base_model=bases, base_model_relation="merge")
    front["library_name"] = "transformers"
    if licence := common_license(names.values()):
        front["license"] = licence
    front["tags"] = list(dict.fromkeys(["mergesmith", "merge", *methods]))
    return front


def model_card(
    recipe: Recipe, recipe_yaml: str, name: str, lineage: Sequence[LineageStep] = (), *, base_dir: Path | None = None
) -> str:
    """``lineage``: the stages of a multi-stage recipe, final one last (``recipe`` is that one and
    ``recipe_yaml`` the whole file); the front matter then lists the models the lineage starts from.
    ``base_dir``: the recipe's folder, where relative model paths are looked up after the working
    directory (as the merge does), so that they are named, not mistaken for Hub ids."""
    base = recipe.base_model if recipe.merge_method != "slerp" else None
    models = [m for m in recipe.referenced_models() if m != base]
    refs = [m for _, _, inputs in lineage for m in inputs] or list(recipe.referenced_models())
    stages = [stage for stage, _, _ in lineage]
    names = card_names(refs, base_dir, stages)
    front = merge_front(refs, names, [method for _, method, _ in lineage] or [recipe.merge_method])
    # The tokenizer's source is named in the recipe too, but was not merged: no licence, no base_model.
    tokenizer = recipe.tokenizer_choice
    if tokenizer not in (None, "base", "union"):
        names = {**card_names([tokenizer], base_dir, stages), **names}
    base_text = f" using {reference_md(base, names)} as a base" if base else ""
    bullets = "\n".join(f"* {reference_md(m, names)}" for m in models)
    local = any(s.kind == "local" for s in names.values())
    return (
        _front(front) + f"# {name}\n\n"
        f"This is a merge of pre-trained language models created with {MERGESMITH_MD}.\n\n"
        "## Merge Details\n\n"
        "### Merge Method\n\n"
        f"This model was merged using the {_method_md(recipe.merge_method)} merge method{base_text}.\n\n"
        "### Models Merged\n\n"
        f"The following models were included in the merge:\n{bullets}\n\n"
        f"{LOCAL_NOTE if local else ''}"
        f"{_lineage_md(lineage, names)}"
        "### Configuration\n\n"
        "The following YAML configuration was used to produce this model:\n\n"
        f"```yaml\n{shown_recipe(recipe_yaml, names).rstrip()}\n```\n"
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


def gguf_card(card: str | None, section: str, *, title: str, model: Path) -> str:
    """The card of a folder of GGUF files quantized from ``model``: ``card`` (None when there is
    none yet) with its GGUF section set to ``section``. A new card gets the Hub's front matter for a
    quantization (``base_model``: the model's Hub id, else its directory name) and a sentence naming
    the model; an existing card keeps its text and gets that front matter only if it has none."""
    shown = shown_path(Path(model).absolute())
    front: dict = {
        "base_model": shown.hub_id or shown.text,
        "base_model_relation": "quantized",
        "quantized_by": "mergesmith",
    }
    if licence := common_license([shown]):  # the licence the model's own card states, if any
        front["license"] = licence
    front["tags"] = ["gguf", "llama.cpp", "mergesmith"]
    if card is None:
        model_md = shown.markdown if shown.hub_id else f"`{shown.text}`"
        about = "" if shown.hub_id else f" The model card of `{shown.text}` says how it was made."
        card = f"# {title}\n\nGGUF files of {model_md} for {LLAMA_CPP_MD}, quantized by {MERGESMITH_MD}.{about}\n"
    card = with_gguf_section(card, section)
    return card if card.startswith("---\n") else _front(front) + card
