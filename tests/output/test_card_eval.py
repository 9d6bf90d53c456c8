"""``mergesmith card OUT --eval results.json``: only OUT's own results go into OUT's card, and the
section names models as cards do (no path of this machine). The results are written by hand, in
the format ``mergesmith eval --json`` writes, so no model is scored here."""

from __future__ import annotations

from pathlib import Path

from cli_helpers import assert_one_error_line, cli

from mergesmith.eval.results import EvalResult, KLScore, ModelScore, TextScore, save_results
from mergesmith.output.card import eval_rows_from_card


def score(model: Path, ref: Path | None) -> ModelScore:
    kl = None if ref is None else KLScore(str(ref), 0.01, 0.02, 0.03, 0.99, 0.5)
    return ModelScore(
        str(model), (TextScore("corpus", "/x/corpus.txt", 100, 400, 2.0, 7.389, 0.72, kl),), (), 1.0, is_ref=ref is None
    )


def results(tmp_path: Path, *models: ModelScore) -> Path:
    path = tmp_path / "r.json"
    save_results(
        EvalResult(models, models[0].model if models[0].is_ref else None, 64, 32, "float32", "2026-12-01"), path
    )
    return path


def folders(tmp_path: Path, *names: str) -> list[Path]:
    paths = [tmp_path / "models" / name for name in names]
    for path in paths:
        path.mkdir(parents=True)
        (path / "README.md").write_text(f"# {path.name}\n")
    return paths


def test_results_of_another_model_are_refused_with_both_named(capsys, tmp_path):
    base, out = folders(tmp_path, "base", "merged")
    path = results(tmp_path, score(base, None), score(out, base))
    line = assert_one_error_line(
        *cli(capsys, "card", out, "--eval", path, "--model", base),
        f"model {base}",
        f"results of {base}, not of {out}",
        f"mergesmith card {base} --eval {path}",
    )
    assert "Traceback" not in line
    assert (out / "README.md").read_text() == "# merged\n"


def test_results_of_one_other_model_are_not_taken_for_out(capsys, tmp_path):
    other, out = folders(tmp_path, "other", "merged")
    path = results(tmp_path, score(other, None))
    assert_one_error_line(
        *cli(capsys, "card", out, "--eval", path), "1 model (", str(other), f"none is {out}", f"mergesmith eval {out}"
    )
    assert (out / "README.md").read_text() == "# merged\n"


def test_out_is_found_by_path_and_the_reference_is_named_not_located(capsys, tmp_path, monkeypatch):
    base, out = folders(tmp_path, "base", "merged")
    path = results(tmp_path, score(base, None), score(out, base))
    monkeypatch.chdir(tmp_path)
    assert cli(capsys, "card", "models/merged", "--eval", path, "--model", out)[0] == 0  # two paths, one model
    card = (out / "README.md").read_text()
    assert ("KL vs base (corpus): mean / p90 / p99", "0.01 / 0.02 / 0.03") in eval_rows_from_card(card)
    assert str(tmp_path) not in card


def test_results_recorded_elsewhere_match_by_name(capsys, tmp_path):
    """``mergesmith eval runs/merged`` in another folder: that path is not here, so the name decides."""
    (out,) = folders(tmp_path, "merged")
    path = results(tmp_path, score(Path("runs/merged"), None))
    assert cli(capsys, "card", out, "--eval", path)[0] == 0
    assert ("perplexity (corpus)", "7.3890") in eval_rows_from_card((out / "README.md").read_text())
    other = results(tmp_path, score(Path("runs/other"), None))
    assert_one_error_line(
        *cli(capsys, "card", out, "--eval", other, "--model", "runs/other"), "results of runs/other, not of"
    )
