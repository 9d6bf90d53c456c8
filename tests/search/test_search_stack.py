"""Layer stacking: which source layers go where, candidates of different depths in one search."""

from __future__ import annotations

import json

import pytest
from search_helpers import FITNESS, REPORT

from mergesmith.errors import ConfigError
from mergesmith.eval.api import evaluate
from mergesmith.eval.data import DATA_DIR
from mergesmith.search import search
from mergesmith.search.derive import branches_of


def stack_recipe(family) -> dict:
    base, ft1, ft2 = map(str, family)
    return {
        "merge_method": "passthrough",
        "slices": [
            {"sources": [{"model": {"choice": [base, ft1]}, "layer_range": {"choice": [[0, 2], [0, 3]]}}]},
            {
                "sources": [
                    {
                        "model": ft2,
                        "layer_range": {"choice": [[2, 4], [1, 4]]},
                        "parameters": {"scale": {"range": [0.5, 1.0]}},
                    }
                ]
            },
        ],
    }


def test_stack_markers_become_choice_dims():
    recipe = stack_recipe(["base", "ft1", "ft2"])
    [branch] = branches_of(recipe, "", "space")
    assert [(d.label, d.options or (d.low, d.high)) for d in branch.dims] == [
        ("slices[0].model", ("base", "ft1")),
        ("slices[0].layer_range", ((0, 2), (0, 3))),
        ("slices[1].layer_range", ((2, 4), (1, 4))),
        ("slices[1].ft2.scale", (0.5, 1.0)),
    ]
    out = branch.recipe(("ft1", (0, 3), (1, 4), 0.75))
    assert out["slices"][0]["sources"][0] == {"model": "ft1", "layer_range": [0, 3]}
    assert out["slices"][1]["sources"][0]["parameters"] == {"scale": 0.75}
    bad = stack_recipe(["base", "ft1", "ft2"])
    bad["slices"][0]["sources"][0]["layer_range"] = {"choice": [[2, 1], [0, 3]]}
    with pytest.raises(ConfigError, match=r"slices\[0\].sources\[0\]: layer_range choices are \[start, end\)"):
        branches_of(bad, "", "space")


def test_a_stack_search_scores_each_depth_as_its_written_merge(llama_family, write_space, tmp_path):
    space = write_space(
        {
            "recipe": stack_recipe(llama_family),
            "optimizer": "random",
            "fitness": FITNESS,
            "report": {**REPORT, "top": 1},
        }
    )
    result = search(space, tmp_path / "out", budget=6, seed=1, threads=1)
    depths = {
        sum(s["sources"][0]["layer_range"][1] - s["sources"][0]["layer_range"][0] for s in r.recipe["slices"])
        for r in result.records
    }
    assert len(depths) >= 2 and all(r.error is None for r in result.records)  # 4 to 6 layers, one worker
    winner = tmp_path / "out" / "winner"
    config = json.loads((winner / "config.json").read_text())
    best = result.winner
    assert config["num_hidden_layers"] == sum(
        s["sources"][0]["layer_range"][1] - s["sources"][0]["layer_range"][0] for s in best.recipe["slices"]
    )
    texts = [DATA_DIR / "text" / f"{n}.txt" for n in FITNESS["terms"][0]["nll"]]
    scored = evaluate([winner], texts=texts, context=FITNESS["context"], limit=FITNESS["limit"])
    assert sum(t.nll for t in scored.models[0].texts) / 2 == pytest.approx(best.fitness, abs=1e-6)
    # Every candidate, whatever the depth the worker held before it, scores as merged alone.
    again = search(
        write_space({"candidates": [result.records[-1].recipe], "fitness": FITNESS, "report": REPORT}, "one.yml"),
        tmp_path / "one",
        budget=1,
        threads=1,
        write_winner=False,
    )
    assert again.records[0].fitness == result.records[-1].fitness
