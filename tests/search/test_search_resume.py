"""Resuming a finished search: the stored leaderboard at once, nothing scored or merged again,
unless ``--report`` asks for the held-out report again; the winner card's paths as written."""

from __future__ import annotations

import pytest
from search_helpers import ta_space

import mergesmith.search.final as final
from mergesmith.cli.main import main
from mergesmith.eval import perplexity
from mergesmith.search.fitness import Scorer


@pytest.fixture
def counted(monkeypatch) -> dict[str, int]:
    """How often a model is scored (any text window, fitness or held-out) and the winner merged."""
    calls = {"scored": 0, "windows": 0, "merged": 0}

    def wrap(owner, name, key):
        original = getattr(owner, name)

        def counting(*args, **kwargs):
            calls[key] += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, counting)

    wrap(Scorer, "score", "scored")
    wrap(perplexity, "score_ids", "windows")
    wrap(final, "merge", "merged")
    return calls


def run(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_a_finished_search_resumed_scores_nothing_and_prints_its_leaderboard(
    llama_family, write_space, tmp_path, capsys, counted, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    space = write_space(ta_space(llama_family, optimizer="random"))
    args = ("search", space.name, "out", "--budget", 3, "--threads", 1, "--quiet")
    code, first, err = run(capsys, *args)
    assert code == 0, err
    assert counted["scored"] > 3 and counted["merged"] == 1  # 3 candidates, then the held-out report
    card = (tmp_path / "out" / "winner" / "README.md").read_bytes()
    assert str(tmp_path) not in card.decode()  # no absolute path of this machine
    assert "model paths are as written in `space.yml`, relative to its folder" in card.decode()

    counted.update(scored=0, windows=0, merged=0)
    code, again, err = run(capsys, *args, "--resume")
    assert code == 0, err
    assert counted == {"scored": 0, "windows": 0, "merged": 0}
    board = first.splitlines()[:-1]  # the leaderboard, then the winner line
    assert again.splitlines()[: len(board)] == board
    assert "as stored by the finished search; --report scores them again" in again.splitlines()[-1]
    assert (tmp_path / "out" / "winner" / "README.md").read_bytes() == card

    code, redone, err = run(capsys, *args, "--resume", "--report")
    assert code == 0, err
    assert counted["scored"] == 2 and counted["merged"] == 1  # report.top 2 held-out rows, no candidate
    assert redone.splitlines() == first.splitlines()


def test_a_changed_report_section_or_a_longer_budget_scores_what_changed(
    llama_family, write_space, tmp_path, capsys, counted
):
    space = write_space(ta_space(llama_family, optimizer="random"))
    assert run(capsys, "search", space, tmp_path / "out", "--budget", 2, "--threads", 1, "--quiet")[0] == 0
    changed = ta_space(llama_family, optimizer="random")
    changed["report"] = {**changed["report"], "top": 1}
    write_space(changed)
    counted.update(scored=0, windows=0, merged=0)
    assert run(capsys, "search", space, tmp_path / "out", "--budget", 2, "--threads", 1, "--quiet", "--resume")[0] == 0
    assert counted["scored"] == 1 and counted["merged"] == 1  # the report again, for its one candidate

    counted.update(scored=0, windows=0, merged=0)
    code, out, err = run(
        capsys, "search", space, tmp_path / "out", "--budget", 3, "--threads", 1, "--quiet", "--resume"
    )
    assert code == 0, err
    assert counted["scored"] == 1 + 1 and counted["merged"] == 1  # candidate #2, then the report
    assert "as stored" not in out


def test_report_needs_resume(llama_family, write_space, tmp_path, capsys):
    space = write_space(ta_space(llama_family))
    code, out, err = run(capsys, "search", space, tmp_path / "out", "--budget", 2, "--report")
    assert code == 2 and out == "" and err.startswith("error: --report") and "--resume" in err
    assert not (tmp_path / "out").exists()
