"""The search space: markers become dims whose ranges and options come from the method registry."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mergesmith.config.load import parse_recipe
from mergesmith.errors import ConfigError
from mergesmith.methods.registry import METHODS
from mergesmith.search.derive import branches_of, build_space
from mergesmith.search.settings import parse_search_file, report_texts
from mergesmith.search.space import Point

MODELS = [{"model": "base"}, {"model": "a"}, {"model": "b"}]


def dims(branch) -> dict:
    return {d.label: (d.options or (d.low, d.high)) for d in branch.dims}


def test_search_marker_takes_the_registry_range_and_required_weights_are_searched():
    [branch] = branches_of(
        {
            "merge_method": "ties",
            "base_model": "base",
            "models": MODELS,
            "parameters": {"density": "search", "normalize": "search"},
        },
        "",
        "space",
    )
    ties = METHODS["ties"]
    assert dims(branch) == {
        "density": ties.param("density").search_bounds,
        "normalize": (True, False),
        # weight is required and never set: one per model but the base, over the registry's range
        "a.weight": ties.param("weight").search_bounds,
        "b.weight": ties.param("weight").search_bounds,
    }


def test_literal_parameters_search_all_their_values():
    [branch] = branches_of(
        {
            "merge_method": "dare_ties",
            "base_model": "base",
            "models": MODELS,
            "parameters": {"rescale": "search", "weight": 0.5},
        },
        "",
        "space",
    )
    assert dims(branch) == {"rescale": (True, False, "paper")}


def test_linear_searches_a_weight_for_every_model_the_base_included():
    [branch] = branches_of({"merge_method": "linear", "models": MODELS}, "", "space")
    assert sorted(dims(branch)) == ["a.weight", "b.weight", "base.weight"]


def test_method_choice_makes_one_branch_per_method_and_drops_foreign_parameters():
    data = {
        "merge_method": {"choice": ["linear", "dare_ties"]},
        "base_model": "base",
        "models": MODELS,
        "parameters": {"density": {"range": [0.2, 0.8]}, "weight": {"choice": [0.25, 0.75]}},
    }
    linear, dare = branches_of(data, "", "space")
    assert (linear.name, dare.name) == ("linear", "dare_ties")
    assert dims(linear) == {"weight": (0.25, 0.75)}  # linear has no density
    assert dims(dare) == {"density": (0.2, 0.8), "weight": (0.25, 0.75)}
    recipe = linear.recipe((0.75,))
    assert "density" not in recipe["parameters"] and recipe["merge_method"] == "linear"
    parse_recipe(recipe)


def test_gradient_gives_one_dim_per_anchor_and_a_list_in_the_recipe():
    data = {
        "merge_method": "slerp",
        "base_model": "base",
        "models": MODELS[:2],
        "parameters": {"t": [{"filter": "self_attn", "value": {"range": [0, 1], "gradient": 3}}, {"value": 0.5}]},
    }
    [branch] = branches_of(data, "", "space")
    assert [d.label for d in branch.dims] == ["t{self_attn}[0]", "t{self_attn}[1]", "t{self_attn}[2]"]
    recipe = parse_recipe(branch.recipe((0.1, 0.2, 0.3)))
    assert recipe.parameters["t"][0].value == (0.1, 0.2, 0.3)
    assert recipe.parameters["t"][1].value == 0.5


def test_values_are_rounded_and_clipped_to_the_range():
    [branch] = branches_of({"merge_method": "slerp", "base_model": "base", "models": MODELS[:2]}, "", "space")
    [t] = branch.dims
    assert (t.at(0.123456789), t.at(-0.5), t.at(1.5)) == (0.1235, 0.0, 1.0)


@pytest.mark.parametrize(
    "params, message",
    [
        ({"densty": 0.5}, "did you mean 'density'"),
        ({"max_iter": "search"}, "unknown parameter"),
        ({"lambda": {"range": [1, 0]}}, "lo < hi"),
        ({"lambda": {"choice": [1]}}, "at least 2 values"),
        ({"lambda": {"range": [0, 1], "gradiant": 2}}, "did you mean 'gradient'"),
        ({"normalize": {"range": [0, 1]}}, "is not a float parameter"),
    ],
)
def test_bad_markers_name_the_parameter_and_the_fix(params, message):
    with pytest.raises(ConfigError, match=message):
        branches_of({"merge_method": "ties", "base_model": "base", "models": MODELS, "parameters": params}, "", "space")


def test_a_parameter_without_registry_range_needs_one():
    with pytest.raises(ConfigError, match=r"no search range in the method registry; write \{range"):
        branches_of({"merge_method": "karcher", "models": MODELS, "parameters": {"tol": "search"}}, "", "space")


def test_candidate_pool_branches_are_named_by_file_and_enumerated(tmp_path: Path):
    for name, weight in (("half", 0.5), ("third", 0.33)):
        (tmp_path / f"{name}.yml").write_text(
            yaml.safe_dump(
                {
                    "merge_method": "linear",
                    "models": [
                        {"model": "a", "parameters": {"weight": weight}},
                        {"model": "b", "parameters": {"weight": 1 - weight}},
                    ],
                }
            )
        )
    inline = {
        "merge_method": "slerp",
        "base_model": "a",
        "models": [{"model": "a"}, {"model": "b"}],
        "parameters": {"t": {"choice": [0.3, 0.7]}},
    }
    space = build_space(None, ["half.yml", "third.yml", inline], tmp_path, "space")
    assert [b.name for b in space.branches] == ["half", "third", "candidate2"]
    assert space.size() == 4 and not space.continuous
    points = list(space.grid(2))
    assert points[:2] == [Point(0, ()), Point(1, ())]
    assert [space.recipe(p)["parameters"]["t"] for p in points[2:]] == [0.3, 0.7]


def test_duplicate_candidate_names_are_refused(tmp_path: Path):
    (tmp_path / "r.yml").write_text(
        yaml.safe_dump({"merge_method": "linear", "models": [{"model": "a", "parameters": {"weight": 1}}]})
    )
    with pytest.raises(ConfigError, match="both named 'r'"):
        build_space(None, ["r.yml", "r.yml"], tmp_path, "space")


def test_search_file_keys_are_strict_and_the_splits_must_differ(tmp_path: Path):
    base = {"recipe": {"merge_method": "linear", "models": MODELS}, "fitness": {"terms": [{"nll": ["kjv_fitness"]}]}}
    with pytest.raises(ConfigError, match="did you mean 'limit'"):
        parse_search_file({**base, "fitness": {"terms": [{"nll": ["kjv_fitness"]}], "limt": 2}}, "s.yml")
    with pytest.raises(ConfigError, match="exactly one of nll, kl, accuracy"):
        parse_search_file({**base, "fitness": {"terms": [{"nll": ["x"], "accuracy": "y"}]}}, "s.yml")
    clash = parse_search_file({**base, "report": {"texts": ["kjv_fitness"]}}, "s.yml")
    with pytest.raises(ConfigError, match="is also a fitness text"):
        report_texts(clash, tmp_path)
    default = parse_search_file(base, "s.yml")
    assert sorted(p.name for p in report_texts(default, tmp_path)) == ["austen_heldout.txt", "kjv_heldout.txt"]
