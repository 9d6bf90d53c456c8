"""End-to-end searches over pico llamas in one process: reproducible, recorded, the winner written."""

from __future__ import annotations

import json
import sqlite3

import pytest
import yaml
from search_helpers import FITNESS, REPORT, board, ta_space

from mergesmith.cli.main import main
from mergesmith.errors import ConfigError, InputFormatError, OutputExistsError
from mergesmith.eval.api import evaluate
from mergesmith.eval.data import DATA_DIR
from mergesmith.search import search


def test_same_seed_same_leaderboard_and_the_written_winner_scores_as_searched(llama_family, write_space, tmp_path):
    space = write_space(ta_space(llama_family))
    first = search(space, tmp_path / "a", budget=8, seed=1, threads=1)
    again = search(space, tmp_path / "b", budget=8, seed=1, threads=1, write_winner=False)
    other = search(space, tmp_path / "c", budget=8, seed=2, threads=1, write_winner=False)
    assert board(first) == board(again)
    assert board(first) != board(other)
    assert [r.index for r in first.records] == list(range(8)) and all(r.error is None for r in first.records)

    # Every candidate is in the SQLite file, with its worker and time.
    rows = (
        sqlite3.connect(tmp_path / "a" / "search.sqlite")
        .execute("SELECT idx, fitness, worker, seconds FROM candidates")
        .fetchall()
    )
    assert sorted((i, f) for i, f, _, _ in rows) == [(r.index, r.fitness) for r in first.records]
    assert {w for _, _, w, _ in rows} == {"main"} and all(s > 0 for *_, s in rows)

    # The winner, merged and written by the normal path, scores what the resident model scored.
    best = first.leaderboard[0]
    winner = tmp_path / "a" / "winner"
    assert yaml.safe_load((winner / "mergesmith_config.yml").read_text()) == best.recipe
    texts = [DATA_DIR / "text" / f"{n}.txt" for n in FITNESS["terms"][0]["nll"]]
    scored = evaluate([winner], texts=texts, context=FITNESS["context"], limit=FITNESS["limit"])
    nlls = [t.nll for t in scored.models[0].texts]
    assert sum(nlls) / len(nlls) == pytest.approx(best.fitness, abs=1e-6)

    # The card: recipe, settings, leaderboard; the held-out split next to the fitness.
    card = (winner / "README.md").read_text()
    assert f"This recipe is candidate #{best.index}, the best of 8" in card
    assert "optimizer cma, seed 1, budget 8" in card and "mean NLL over kjv_heldout, austen_heldout" in card
    assert [row.name for row in first.report] == [f"#{r.index}" for r in first.leaderboard[: REPORT["top"]]]
    assert all(row.heldout != row.fitness and row.heldout > 0 for row in first.report)
    assert f"| 1 | #{best.index} | {best.fitness:.4f} | {first.report[0].heldout:.4f} |" in card
    assert (tmp_path / "a" / "fitness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _linear(family, weights) -> dict:
    return {
        "merge_method": "linear",
        "models": [{"model": str(m), "parameters": {"weight": w}} for m, w in zip(family, weights)],
    }


def test_pool_weighted_objective_and_baselines(llama_family, write_space, tmp_path):
    for name, weights in (("just_base", [1, 0, 0]), ("soup", [0.5, 0.25, 0.25])):
        (tmp_path / f"{name}.yml").write_text(yaml.safe_dump(_linear(llama_family, weights)))
    task = tmp_path / "task.jsonl"
    task.write_text(
        "".join(
            json.dumps({"question": q, "choices": ["yes", "no"], "answer": a}) + "\n"
            for q, a in (("Is the sky blue?", 0), ("Is fire cold?", 1), ("Do fish swim?", 0))
        )
    )
    terms = [
        {"nll": ["kjv_fitness"]},
        {"kl": ["austen_fitness"], "ref": str(llama_family[0]), "weight": 2.0},
        {"accuracy": "task.jsonl", "weight": 0.5},
    ]
    space = write_space(
        {
            "candidates": ["just_base.yml", "soup.yml"],
            "fitness": {**FITNESS, "terms": terms},
            "report": {**REPORT, "baselines": ["soup.yml"]},
        }
    )
    result = search(space, tmp_path / "out", budget=10, threads=1)

    assert result.settings["optimizer"] == "grid" and len(result.records) == 2  # the pool, in order, once
    base, soup = result.records
    assert (base.params, soup.params) == ({"branch": "just_base"}, {"branch": "soup"})
    assert base.details["kl austen_fitness"] == pytest.approx(0.0, abs=1e-7)  # the base against itself
    assert soup.details["kl austen_fitness"] > 1e-4
    for r in result.records:
        terms = r.details
        expected = terms["nll kjv_fitness"] + 2.0 * terms["kl austen_fitness"] + 0.5 * terms["error task"]
        assert r.fitness == pytest.approx(expected, rel=1e-12)
        assert terms["error task"] in (0.0, 0.5, 1.0)  # fitness.limit 2: the first two items
    baseline = next(row for row in result.report if row.kind == "baseline")
    assert baseline.name == "soup" and baseline.fitness == soup.fitness  # same recipe, same numbers


def test_a_candidate_that_fails_to_merge_is_recorded_and_skipped(llama_family, write_space, tmp_path):
    base, ft1, ft2 = map(str, llama_family)
    recipe = {
        "merge_method": "della",
        "base_model": base,
        "models": [{"model": base}, {"model": ft1}, {"model": ft2}],
        "parameters": {"weight": 0.5, "epsilon": 0.15, "density": {"choice": [0.5, 0.95]}},
    }
    space = write_space({"recipe": recipe, "optimizer": "grid", "fitness": FITNESS, "report": REPORT})
    result = search(space, tmp_path / "out", budget=5, threads=1)
    good, bad = result.records
    assert bad.params["density"] == 0.95 and "outside (0, 1)" in bad.error and bad.fitness == float("inf")
    assert good.error is None and result.leaderboard[0] is good
    assert "failed" in (tmp_path / "out" / "winner" / "README.md").read_text()


def test_out_and_resume_are_checked(llama_family, write_space, tmp_path):
    space = write_space(ta_space(llama_family))
    with pytest.raises(InputFormatError, match="no search to resume"):
        search(space, tmp_path / "none", budget=2, resume=True, threads=1)
    search(space, tmp_path / "out", budget=2, threads=1, write_winner=False)
    with pytest.raises(OutputExistsError, match="--resume"):
        search(space, tmp_path / "out", budget=2, threads=1)
    with pytest.raises(ConfigError, match="started with seed 0, now 3"):
        search(space, tmp_path / "out", budget=2, seed=3, resume=True, threads=1)
    assert len(search(space, tmp_path / "out", budget=3, force=True, threads=1, write_winner=False).records) == 3
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("keep me")
    with pytest.raises(OutputExistsError, match="not a search directory"):
        search(space, tmp_path / "precious", budget=2, force=True, threads=1)
    assert (tmp_path / "precious" / "notes.txt").is_file()


def test_cli_prints_the_leaderboard_and_errors_in_one_line(llama_family, write_space, tmp_path, capsys):
    space = write_space(ta_space(llama_family, optimizer="random"))
    assert main(["search", str(space), str(tmp_path / "out"), "--budget", "3", "--threads", "1"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[0].split()[:4] == ["rank", "candidate", "fitness", "held-out"]
    assert "winner: #" in out and err.count("[") >= 3 and "[3/3]" in err
    bad = write_space({"recipe": {"merge_method": "linaer", "models": []}, "fitness": FITNESS}, "bad.yml")
    assert main(["search", str(bad), str(tmp_path / "bad"), "--budget", "3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "did you mean 'linear'" in err


@pytest.mark.parametrize("kind", ["qwen2", "phi2", "gemma3"])
def test_the_resident_model_scores_as_the_written_merge_on_every_family(families, kind, write_space, tmp_path):
    """Tied embeddings (qwen2, gemma3), biases and a dense head (phi2): the resident model's
    parameters are the written model's, so its fitness is the same number."""
    base, ft1, ft2 = map(str, families[kind])
    recipe = {
        "merge_method": "ties",
        "base_model": base,
        "models": [{"model": m} for m in (base, ft1, ft2)],
        "parameters": {"density": 0.5},
    }
    space = write_space({"recipe": recipe, "optimizer": "random", "fitness": FITNESS, "report": {**REPORT, "top": 1}})
    result = search(space, tmp_path / "out", budget=1, threads=1)
    texts = [DATA_DIR / "text" / f"{n}.txt" for n in FITNESS["terms"][0]["nll"]]
    scored = evaluate([tmp_path / "out" / "winner"], texts=texts, context=FITNESS["context"], limit=FITNESS["limit"])
    assert sum(t.nll for t in scored.models[0].texts) / 2 == pytest.approx(result.records[0].fitness, abs=1e-6)
