"""Racing (successive halving), paired standard errors, layer groups: over pico llamas, one thread."""

from __future__ import annotations

import math

import pytest
from search_helpers import FITNESS, REPORT, board, ta_space

from mergesmith.config.load import parse_recipe
from mergesmith.eval.data import Text
from mergesmith.io.resolve import open_headers
from mergesmith.plan.planner import build_plan
from mergesmith.search import search
from mergesmith.search.derive import branches_of
from mergesmith.search.fitness import Objective, ObjectiveTerm
from mergesmith.search.noise import paired, verdict
from mergesmith.search.space import Space

RACING = {**FITNESS, "limit": 4, "racing": {"start": 1, "eta": 2}}


def test_racing_promotes_the_best_share_and_scores_only_the_windows_they_lack(llama_family, write_space, tmp_path):
    space = write_space(ta_space(llama_family, fitness=RACING))
    raced = search(space, tmp_path / "raced", budget=8, seed=2, threads=1, write_winner=False)
    # Rungs of 1, 2, 4 windows per text; a generation of 4: all at rung 0, the best 2, then the best 1.
    assert raced.settings["racing"] == "rungs of 1, 2, 4 windows per text"
    for generation in (raced.records[:4], raced.records[4:]):
        rungs = sorted(r.details["rung"] for r in generation)
        assert rungs == [0, 0, 1, 2]
        first = sorted(generation, key=lambda r: (r.details["fitness_by_rung"][0], r.index))
        assert [r.details["rung"] for r in first[:2]] == [2, 1]  # promoted by rung-0 fitness
        for r in generation:
            assert [len(r.details["windows"][f"0/{i}"]) for i in (0, 1)] == [(1, 2, 4)[r.details["rung"]]] * 2
    # The optimizer is told rung-0 fitness: the same candidates as a plain search on the first window.
    plain = search(
        write_space(ta_space(llama_family, fitness={**FITNESS, "limit": 1}), "plain.yml"),
        tmp_path / "plain",
        budget=8,
        seed=2,
        threads=1,
        write_winner=False,
    )
    assert [r.params for r in plain.records] == [r.params for r in raced.records]
    assert [r.fitness for r in plain.records] == [r.details["fitness_by_rung"][0] for r in raced.records]
    # Windows scored rung by rung add up to the fitness of one pass over 4 windows, to the last bit.
    full = search(
        write_space({**ta_space(llama_family, fitness={**FITNESS, "limit": 4}), "optimizer": "grid"}, "g.yml"),
        tmp_path / "full",
        budget=1,
        threads=1,
        write_winner=False,
    )
    top = raced.leaderboard[0]
    assert top.details["rung"] == 2
    again = search(
        write_space({"candidates": [top.recipe], "fitness": {**FITNESS, "limit": 4}, "report": REPORT}, "again.yml"),
        tmp_path / "again",
        budget=1,
        threads=1,
        write_winner=False,
    )
    assert again.records[0].fitness == top.fitness and full.records[0].fitness != top.fitness
    # The leaderboard ranks by the rung reached first.
    assert [r.details["rung"] for r in raced.leaderboard[:2]] == [2, 2]


def test_a_finished_racing_search_resumes_without_scoring(llama_family, write_space, tmp_path):
    space = write_space(ta_space(llama_family, fitness=RACING))
    first = search(space, tmp_path / "out", budget=4, threads=1, write_winner=False)
    scored = []
    again = search(
        space,
        tmp_path / "out",
        budget=4,
        threads=1,
        resume=True,
        write_winner=False,
        on_result=lambda r, n: scored.append(r),
    )
    assert board(again) == board(first) and scored == []


def _objective(texts: int) -> Objective:
    text = Text("t", "t", "x")
    return Objective((ObjectiveTerm("nll", 1.0, (text,) * texts),), 8, 4, 1, None)


def test_paired_difference_is_the_fitness_difference_and_its_se_is_sd_over_root_n():
    obj = _objective(1)
    a = {"0/0": [[2.0 * n, n, 0.0] for n in (4, 4, 4, 4)]}  # mean NLL 2.0 per window
    deltas = [0.1, 0.3, 0.2, 0.0]
    b = {"0/0": [[(2.0 + d) * 4, 4, 0.0] for d in deltas]}
    p = paired(obj, b, a)
    assert p.diff == pytest.approx(sum(deltas) / 4)
    sd = math.sqrt(sum((d - 0.15) ** 2 for d in deltas) / 3)
    assert p.se == pytest.approx(sd / 2) and p.windows == 4
    assert p.diff / p.se == pytest.approx(0.15 / (sd / 2))
    assert verdict(p) == "clear (≥ 2 SE)"  # 2.32 SE
    noisy = paired(obj, {"0/0": [[(2.0 + d) * 4, 4, 0.0] for d in (0.3, -0.2, 0.25, -0.15)]}, a)
    assert verdict(noisy) == "inside the noise (< 2 SE)"
    # Two texts: each text's windows weigh by half; only shared windows count.
    obj2 = _objective(2)
    short = {"0/0": a["0/0"][:2], "0/1": a["0/0"]}
    p2 = paired(obj2, {"0/0": b["0/0"], "0/1": b["0/0"]}, short)
    assert p2.windows == 6 and p2.diff == pytest.approx(0.5 * 0.2 + 0.5 * 0.15)


def test_layer_groups_are_one_value_per_contiguous_group_of_layers(llama_family):
    base, ft1, _ = map(str, llama_family)
    data = {
        "merge_method": "slerp",
        "base_model": base,
        "models": [{"model": base}, {"model": ft1}],
        "parameters": {"t": [{"filter": "self_attn", "value": {"range": [0, 1], "groups": 2}}, {"value": 0.5}]},
    }
    [branch] = branches_of(data, "", "space")
    assert [d.label for d in branch.dims] == ["t{self_attn}[g0]", "t{self_attn}[g1]"]
    space = Space((branch,)).with_layers(0, 4)
    recipe = space.branches[0].recipe((0.2, 0.8))
    assert recipe["parameters"]["t"][0]["value"] == [0.2, 0.2, 0.8, 0.8]
    models = open_headers([base, ft1])
    plan = build_plan(parse_recipe(recipe), models)
    t = {(job.layer, "self_attn" in job.output): job.params.t for job in plan.jobs if job.layer is not None}
    assert [t[(i, True)] for i in range(4)] == pytest.approx([0.2, 0.2, 0.8, 0.8], abs=1e-12)
    assert {t[(i, False)] for i in range(4)} == {0.5}
    assert Space((branch,)).with_layers(0, 7).branches[0].recipe((0.1, 0.9))["parameters"]["t"][0]["value"] == [
        0.1,
        0.1,
        0.1,
        0.1,
        0.9,
        0.9,
        0.9,
    ]


def test_groups_marker_errors_name_the_fix():
    from mergesmith.errors import ConfigError

    base = {"merge_method": "slerp", "base_model": "a", "models": [{"model": "a"}, {"model": "b"}]}
    for value, message in (
        ({"range": [0, 1], "groups": 1}, "at least 2"),
        ({"range": [0, 1], "groups": 2, "gradient": 2}, "without gradient"),
        ({"choice": [0.1, 0.2], "groups": 2}, "not a choice"),
    ):
        with pytest.raises(ConfigError, match=message):
            branches_of({**base, "parameters": {"t": value}}, "", "space")


def test_the_selection_split_picks_the_winner_and_the_noise_is_named(llama_family, write_space, tmp_path, capsys):
    from mergesmith.cli.main import main

    space = write_space(
        ta_space(llama_family, optimizer="random", selection={"top": 3, "limit": 2}, report={**REPORT, "top": 1})
    )
    code = main(["search", str(space), str(tmp_path / "out"), "--budget", "5", "--threads", "1", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0
    result = search(space, tmp_path / "again", budget=5, threads=1)
    candidates = [r for r in result.report if r.kind == "candidate"]
    assert [r.name for r in candidates] == [f"#{r.index}" for r in result.leaderboard[:3]]
    best = min(candidates, key=lambda r: r.details["selection"])
    assert f"#{result.winner.index}" == best.name
    assert f"winner: #{result.winner.index}" in out and "selection NLL" in out.splitlines()[0]
    assert any(line.startswith("selection: ") and "paired windows" in line for line in out.splitlines())
    held = [line for line in out.splitlines() if line.startswith("held-out: ")]
    assert len(held) == 2 and all(("inside the noise" in x) or ("clear" in x) or ("not ahead" in x) for x in held)
    card = (tmp_path / "again" / "winner" / "README.md").read_text()
    assert f"candidate #{result.winner.index}" in card and "picked on the selection split" in card
    assert "mean NLL over kjv_selection, austen_selection" in card and "Paired differences" in card


def test_regmean_in_the_space_computes_its_grams_once_and_scores_as_written(
    llama_family, write_space, tmp_path, monkeypatch
):
    from mergesmith.calibrate import stream
    from mergesmith.eval.api import evaluate
    from mergesmith.eval.data import DATA_DIR

    runs, real = [], stream.layer_grams
    monkeypatch.setattr(stream, "layer_grams", lambda *a, **k: runs.append(a[0].key) or real(*a, **k))
    base, ft1, ft2 = map(str, llama_family)
    recipe = {
        "merge_method": {"choice": ["linear", "regmean"]},
        "base_model": base,
        "models": [{"model": ft1}, {"model": ft2}],
        "parameters": {
            "weight": 0.5,
            "calibration": "kjv_train",
            "calibration_tokens": 300,
            "alpha": {"choice": [0.3, 0.9]},
        },
    }
    space = write_space({"recipe": recipe, "optimizer": "grid", "fitness": FITNESS, "report": {**REPORT, "top": 3}})
    result = search(space, tmp_path / "out", budget=10, threads=1, calibration_cache=tmp_path / "cache")
    assert [r.params["branch"] for r in result.records] == ["linear", "regmean", "regmean"]
    assert sorted(runs) == sorted([ft1, ft2])  # two candidates, the report and the winner: computed once
    assert len({r.fitness for r in result.records}) == 3
    best = result.winner
    texts = [DATA_DIR / "text" / f"{n}.txt" for n in FITNESS["terms"][0]["nll"]]
    scored = evaluate([tmp_path / "out" / "winner"], texts=texts, context=FITNESS["context"], limit=FITNESS["limit"])
    assert sum(t.nll for t in scored.models[0].texts) / 2 == pytest.approx(best.fitness, abs=1e-6)
