"""The card's front matter lists plain model ids for ``base[@rev]+adapter[@rev]`` references.

Hugging Face reads ``base_model`` as model ids, so the revision and the LoRA adapter stay out of
it and appear in the card's text instead (and in the recipe). Local paths are named by their last
component everywhere, the quoted recipe included (output/card_names.py).
"""

from __future__ import annotations

import yaml

from mergesmith.config.load import parse_recipe
from mergesmith.output.card import model_card, recipe_from_card
from mergesmith.output.card_names import RENAMED_NOTE

RECIPE = """merge_method: task_arithmetic
base_model: org/base@v1
models:
  - model: org/base@v1
  - model: org/chat+org/chat-lora@r2
    parameters: {weight: 0.5}
  - model: {model: {path: /data/local-ft}, lora: {path: /data/adapters/math}}
    parameters: {weight: 0.3}
  - model: org/chat
    parameters: {weight: 0.2}
"""


def _front(card: str) -> dict:
    return yaml.safe_load(card.split("---\n")[1])


def _section(card: str, heading: str, until: str) -> str:
    return card[card.index(heading) : card.index(until)]


def test_front_matter_lists_each_model_once_without_revision_or_adapter():
    card = model_card(parse_recipe(yaml.safe_load(RECIPE)), RECIPE, "out")
    # org/chat appears with and without an adapter: one entry. The local path is no hub id (the
    # Hub refuses such a card): it is named, not listed, and its path appears nowhere.
    assert _front(card)["base_model"] == ["org/base", "org/chat"]
    assert _front(card)["base_model_relation"] == "merge"
    assert "/data" not in card
    shown = RECIPE.replace("/data/local-ft", "local-ft").replace("/data/adapters/math", "math")
    assert recipe_from_card(card) == f"{RENAMED_NOTE}\n{shown.rstrip()}"


def test_adapters_and_revisions_are_named_in_the_text():
    card = model_card(parse_recipe(yaml.safe_load(RECIPE)), RECIPE, "out")
    method = _section(card, "### Merge Method", "### Models Merged")
    assert "using [org/base@v1](https://huggingface.co/org/base/tree/v1) as a base" in method
    models = _section(card, "### Models Merged", "### Configuration")
    assert (
        "* [org/chat](https://huggingface.co/org/chat) with the LoRA adapter "
        "[org/chat-lora@r2](https://huggingface.co/org/chat-lora/tree/r2) merged in\n"
    ) in models
    assert "* local-ft with the LoRA adapter math merged in\n" in models
    assert "* [org/chat](https://huggingface.co/org/chat)\n" in models
    assert "+" not in models  # no combined base+adapter strings left in the text


def test_lineage_front_matter_skips_stages_read_with_an_adapter():
    final = parse_recipe(
        {
            "merge_method": "linear",
            "models": [
                {"model": "C+org/style-lora", "parameters": {"weight": 0.5}},
                {"model": "org/other@main", "parameters": {"weight": 0.5}},
            ],
        }
    )
    steps = [
        ("C", "slerp", ("org/a", "org/b+org/b-lora")),
        ("final merge", "linear", ("C+org/style-lora", "org/other@main")),
    ]
    card = model_card(final, "lineage text", "out", lineage=steps)
    assert _front(card)["base_model"] == ["org/a", "org/b", "org/other"]
    assert _front(card)["tags"] == ["mergesmith", "merge", "slerp", "linear"]
    lineage = _section(card, "### Lineage", "### Configuration")
    hub = "https://huggingface.co"
    assert (
        f"1. C: [SLERP](https://en.wikipedia.org/wiki/Slerp) of [org/a]({hub}/org/a), [org/b]({hub}/org/b) "
        f"with the LoRA adapter [org/b-lora]({hub}/org/b-lora) merged in\n"
    ) in lineage
    assert (
        f"2. final merge: [Linear](https://arxiv.org/abs/2203.05482) of C with the LoRA adapter "
        f"[org/style-lora]({hub}/org/style-lora) merged in, [org/other@main]({hub}/org/other/tree/main)\n"
    ) in lineage
