"""The model card: front matter, then Merge Details → Merge Method → Models Merged → Configuration."""

from __future__ import annotations

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
