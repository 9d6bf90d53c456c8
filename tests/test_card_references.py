"""The card's front matter lists plain model ids for ``base[@rev]+adapter[@rev]`` references.

Hugging Face reads ``base_model`` as model ids, so the revision and the LoRA adapter stay out of
it and appear in the card's text instead (and in the recipe, verbatim).
"""

from __future__ import annotations

import yaml

from mergesmith.config.load import parse_recipe
from mergesmith.output.card import model_card, recipe_from_card

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
    return card[card.index(heading):card.index(until)]


def test_front_matter_lists_each_model_once_without_revision_or_adapter():
    card = model_card(parse_recipe(yaml.safe_load(RECIPE)), RECIPE, "out")
    # org/chat appears with and without an adapter: one entry. The local path is no hub id (the
    # Hub refuses such a card): it stays in the recipe only.
    assert _front(card)["base_model"] == ["org/base", "org/chat"]
    assert "/data/local-ft" in card
    assert recipe_from_card(card) == RECIPE.rstrip()


def test_adapters_and_revisions_are_named_in_the_text():
    card = model_card(parse_recipe(yaml.safe_load(RECIPE)), RECIPE, "out")
    method = _section(card, "### Merge Method", "### Models Merged")
    assert "using org/base@v1 as a base" in method
    models = _section(card, "### Models Merged", "### Configuration")
    assert "* org/chat with the LoRA adapter org/chat-lora@r2 merged in\n" in models
    assert "* /data/local-ft with the LoRA adapter /data/adapters/math merged in\n" in models
    assert "* org/chat\n" in models
    assert "+" not in models   # no combined base+adapter strings left in the text


def test_lineage_front_matter_skips_stages_read_with_an_adapter():
    final = parse_recipe({"merge_method": "linear", "models": [
        {"model": "C+org/style-lora", "parameters": {"weight": 0.5}},
        {"model": "org/other@main", "parameters": {"weight": 0.5}},
    ]})
    steps = [("C", "slerp", ("org/a", "org/b+org/b-lora")),
             ("final merge", "linear", ("C+org/style-lora", "org/other@main"))]
    card = model_card(final, "lineage text", "out", lineage=steps)
    assert _front(card)["base_model"] == ["org/a", "org/b", "org/other"]
    lineage = _section(card, "### Lineage", "### Configuration")
    assert "1. C: [SLERP](https://en.wikipedia.org/wiki/Slerp) of org/a, org/b with the LoRA adapter org/b-lora " \
           "merged in\n" in lineage
    assert "2. final merge: [Linear](https://arxiv.org/abs/2203.05482) of C with the LoRA adapter org/style-lora " \
           "merged in, org/other@main\n" in lineage
