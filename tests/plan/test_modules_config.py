"""The ``modules:`` recipe form parsed strictly, and a module's parameters over the recipe's."""

from __future__ import annotations

import pydantic
import pytest

from mergesmith.config.load import load_recipe
from mergesmith.config.params import resolve
from mergesmith.config.schema import Conditional
from mergesmith.errors import ConfigError
from mergesmith.plan.modules import combined

RECIPE = """
modules:
  text_decoder:
    models: [{model: a}, {model: b}]
    parameters: {t: [0, 1]}
  vision_tower:
    slices:
      - sources: [{model: c, layer_range: [0, 2]}, {model: a, layer_range: [0, 2]}]
merge_method: slerp
base_model: a
parameters: {t: 0.5}
"""


def test_modules_parse_into_frozen_objects():
    recipe = load_recipe(RECIPE)
    assert list(recipe.modules) == ["text_decoder", "vision_tower"]
    assert recipe.modules["text_decoder"].parameters == {"t": (0, 1)}
    assert recipe.modules["vision_tower"].slices[0].sources[0].layer_range == (0, 2)
    assert recipe.referenced_models() == ("a", "b", "c")
    with pytest.raises(pydantic.ValidationError):
        recipe.modules["text_decoder"].parameters = None


@pytest.mark.parametrize(
    "change,fragments",
    [
        (("    models: [{model: a}, {model: b}]\n", "    modles: [{model: a}, {model: b}]\n"), ("modles", "'models'")),
        (("merge_method", "models: [{model: a}]\nmerge_method"), ("exactly one of", "'modules'")),
        (
            (
                "    parameters: {t: [0, 1]}\n",
                "    parameters: {t: [0, 1]}\n    slices: [{sources: [{model: a, layer_range: [0, 2]}]}]\n",
            ),
            ("modules.text_decoder", "exactly one of 'slices' or 'models'"),
        ),
        (("  vision_tower:\n", "  vision_tower:\n    parametrs: {t: 1}\n"), ("parametrs", "'parameters'")),
    ],
)
def test_bad_modules_name_the_key_and_the_fix(change, fragments):
    with pytest.raises(ConfigError) as info:
        load_recipe(RECIPE.replace(*change))
    message = str(info.value)
    assert "\n" not in message and all(f in message for f in fragments), message


def _t(scope, name: str) -> float:
    return resolve("t", [scope], name, 0.0, float)[1]


def test_a_module_filter_falls_through_to_the_recipe():
    module = {"t": (Conditional(value=0.1, filter="self_attn"),)}
    scope = combined(module, {"t": 0.6, "weight": 2.0})
    assert _t(scope, "model.layers.0.self_attn.q_proj.weight") == 0.1
    assert _t(scope, "model.layers.0.mlp.up_proj.weight") == 0.6
    assert scope["weight"] == 2.0


def test_a_module_value_overrides_the_recipe():
    scope = combined({"t": 0.2}, {"t": (Conditional(value=0.9, filter="mlp"), Conditional(value=0.6))})
    assert _t(scope, "model.layers.0.mlp.up_proj.weight") == 0.2
    assert combined(None, {"t": 0.6}) == {"t": 0.6} and combined({"t": 0.2}, None) == {"t": 0.2}
