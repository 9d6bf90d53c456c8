"""Three disjoint splits (fitness, selection, held-out), the bundled selection texts, and --dry-run."""

from __future__ import annotations

import pytest
from search_helpers import FITNESS, ta_space

from mergesmith.cli.main import main
from mergesmith.errors import ConfigError
from mergesmith.eval.data import DATA_DIR, Text, read_text
from mergesmith.search.settings import parse_search_file
from mergesmith.search.splits import split_text, splits

BASE = {"recipe": {"merge_method": "linear", "models": [{"model": "a"}]}}


def test_a_single_fitness_file_is_cut_60_20_20_at_line_boundaries(tmp_path):
    lines = [f"line {i:03d} " + "x" * (i % 7) + "\n" for i in range(200)]
    (tmp_path / "mine.txt").write_text("".join(lines))
    search = parse_search_file({**BASE, "fitness": {"terms": [{"nll": ["mine.txt"]}]}, "selection": {}}, "s.yml")
    texts = splits(search, tmp_path)
    fit, sel, held = texts.fitness["mine.txt"], texts.selection[0], texts.heldout[0]
    assert fit.text + sel.text + held.text == "".join(lines)  # nothing lost, nothing shared
    assert all(t.endswith("\n") for t in (fit.text, sel.text, held.text))
    total = len("".join(lines))
    assert abs(len(fit.text) - 0.6 * total) <= 20 and abs(len(sel.text) - 0.2 * total) <= 20
    assert (fit.name, sel.name, held.name) == ("mine[fitness]", "mine[selection]", "mine[heldout]")
    assert split_text(read_text(tmp_path / "mine.txt")) == (fit, sel, held)  # the same cut every time
    # Without a selection section nothing is cut: old search files score the whole file.
    old = splits(parse_search_file({**BASE, "fitness": {"terms": [{"nll": ["mine.txt"]}]}}, "s.yml"), tmp_path)
    assert old.fitness["mine.txt"].text == "".join(lines) and old.selection == () and old.heldout is None


def test_bundled_fitness_texts_select_on_the_bundled_selection_texts(tmp_path):
    search = parse_search_file({**BASE, "fitness": FITNESS, "selection": {"top": 3}}, "s.yml")
    texts = splits(search, tmp_path)
    assert [t.name for t in texts.selection] == ["kjv_selection", "austen_selection"]
    with pytest.raises(ConfigError, match="is also a fitness text"):
        splits(
            parse_search_file({**BASE, "fitness": FITNESS, "selection": {"texts": ["kjv_fitness"]}}, "s.yml"), tmp_path
        )
    (tmp_path / "a.txt").write_text("one\n" * 50)
    (tmp_path / "b.txt").write_text("two\n" * 50)
    two = parse_search_file({**BASE, "fitness": {"terms": [{"nll": ["a.txt", "b.txt"]}]}, "selection": {}}, "s.yml")
    with pytest.raises(ConfigError, match="name the selection texts"):
        splits(two, tmp_path)


def test_too_short_a_file_to_cut_says_so():
    from mergesmith.errors import InputFormatError

    with pytest.raises(InputFormatError, match="too few lines"):
        split_text(Text("x", "x.txt", "just one line\n"))


@pytest.mark.parametrize("corpus", ["austen", "kjv"])
def test_bundled_selection_texts_share_no_passage_with_the_other_splits(corpus):
    def long_lines(split: str) -> set[str]:
        return {p for p in read_text(DATA_DIR / "text" / f"{corpus}_{split}.txt").text.split("\n") if len(p) > 80}

    selection = long_lines("selection")
    assert 50_000 < len((DATA_DIR / "text" / f"{corpus}_selection.txt").read_bytes()) <= 100_000
    for split in ("heldout", "fitness", "train"):
        assert not selection & long_lines(split), split


def test_dry_run_prints_space_genome_and_estimate_and_writes_nothing(llama_family, write_space, tmp_path, capsys):
    data = ta_space(llama_family)
    data["recipe"]["parameters"]["lambda"] = {"range": [0, 2], "groups": 2}
    data["fitness"] = {**FITNESS, "limit": 6, "racing": {"start": 2, "eta": 3}}
    space = write_space({**data, "selection": {"top": 2, "limit": 2}})
    code = main(["search", str(space), str(tmp_path / "out"), "--budget", "8", "--dry-run", "--threads", "1"])
    out = capsys.readouterr().out
    assert code == 0 and not (tmp_path / "out").exists()
    lines = out.splitlines()
    assert lines[0] == "space: 1 branch, 4 searched values; continuous (infinitely many candidates)"
    assert lines[2].strip() == (
        "task_arithmetic: lambda[g0] in [0, 2], lambda[g1] in [0, 2], ft1.weight in [0, 1], ft2.weight in [0, 1]"
    )
    assert "racing: rungs of 2, 6 windows per text" in out and "kjv_selection, austen_selection" in out
    # popsize 4: two generations of 4, each 4 merges on rung 0 and 2 on rung 1
    assert "estimate: 8 candidates in generations of 4, 12 merges," in out and "search ≈" in out
    estimate = next(line for line in lines if line.startswith("estimate: "))
    assert "search ≈" in estimate and "report ≈" in estimate and estimate.endswith("at load 5.6)")


def test_racing_needs_room_below_the_limit_and_names_its_keys():
    fitness = {"terms": [{"nll": ["kjv_fitness"]}], "limit": 4}
    with pytest.raises(ConfigError, match=r"racing.start \(4\) must be below limit \(4\)"):
        parse_search_file({**BASE, "fitness": {**fitness, "racing": {"start": 4}}}, "s.yml")
    with pytest.raises(ConfigError, match="did you mean 'eta'"):
        parse_search_file({**BASE, "fitness": {**fitness, "racing": {"etta": 2}}}, "s.yml")
    search = parse_search_file({**BASE, "fitness": {**fitness, "limit": 20, "racing": {"start": 2, "eta": 3}}}, "s.yml")
    assert search.fitness.rungs() == (2, 6, 18, 20)
    assert parse_search_file({**BASE, "fitness": fitness}, "s.yml").fitness.rungs() == (4,)
