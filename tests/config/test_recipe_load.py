"""Parsing recipes: the published forms parse, bad keys fail with the nearest valid key."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from mergesmith.config.load import load_recipe
from mergesmith.config.schema import Conditional
from mergesmith.errors import ConfigError

SLERP = """
slices:
  - sources:
      - model: A
        layer_range: [0, 32]
      - model: B
        layer_range: [0, 32]
merge_method: slerp
base_model: A
parameters:
  t:
    - filter: self_attn
      value: [1, 0.7, 0.3, 0.5, 0]
    - filter: mlp
      value: [0, 0.3, 0.7, 0.5, 1]
    - value: 0.5 # fallback for rest of tensors
dtype: bfloat16
"""


def test_published_slerp_parses_to_frozen_canonical_types():
    recipe = load_recipe(SLERP)
    t = recipe.parameters["t"]
    assert t[0] == Conditional(filter="self_attn", value=(1, 0.7, 0.3, 0.5, 0))
    assert t[2] == Conditional(value=0.5)
    assert recipe.slices[0].sources[1].layer_range == (0, 32)
    with pytest.raises(ValidationError):
        recipe.merge_method = "linear"  # frozen


@pytest.mark.parametrize(
    "text,expected",
    [
        (
            "merge_method: ties\nmodels: [{model: a}]\nbase_modle: a\n",
            "unknown key 'base_modle'; did you mean 'base_model'?",
        ),
        ("merge_method: ties\nslices: [{sources: [{model: a, layer_rnge: [0, 1]}]}]\n", "did you mean 'layer_range'?"),
        (
            "merge_method: ties\nmodels: [{model: a, parameters: {weight: [{filtr: mlp, value: 1}]}}]\n",
            "did you mean 'filter'?",
        ),
        ("merge_method: ties\nmodels: [{model: a, paramters: {weight: 1}}]\n", "did you mean 'parameters'?"),
        (
            "merge_method: ties\nmodels: [{model: a}]\ndtype: bf16\n",
            "dtype 'bf16' is not a dtype; did you mean 'bfloat16'?",
        ),
        ("merge_method: ties\nmodels: [{model: a}]\nout_dtype: float8\n", "out_dtype 'float8'"),
        ("merge_method: ties\n", "exactly one of 'slices' or 'models'"),
        ("merge_method: ties\nmodels: [{model: a}]\ntokenizer_source: base\ntokenizer: {source: base}\n", "not both"),
        ("- just\n- a list\n", "a recipe is a YAML mapping"),
        ("merge_method: [unclosed\n", "not valid YAML"),
        (
            "merge_method: regmean\nmodels: [{model: a, parameters: {calibration: null}}]\n",
            "models[0].parameters.calibration = null: a parameter needs a value",
        ),
        ("merge_method: ties\nmodels: [{model: a}]\nparameters: {weight: [1, null]}\n", "parameters.weight[1] = null"),
    ],
)
def test_bad_recipes_name_the_key_and_the_fix(text, expected):
    with pytest.raises(ConfigError) as info:
        load_recipe(text)
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_recipe_file_not_found(tmp_path):
    with pytest.raises(ConfigError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yml")


def test_legacy_residual_weight_warns():
    text = "merge_method: passthrough\nslices: [{sources: [{model: a, layer_range: [0, 1]}], residual_weight: 0.5}]\n"
    with pytest.warns(UserWarning, match="residual_weight is a legacy key"):
        load_recipe(text)
