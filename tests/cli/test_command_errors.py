"""Bad input to ``eval`` and ``card``, end to end: exit 2, one ``error:`` line naming the
file (and line, key or tensor) and the fix, no traceback, nothing written, inputs byte-identical.

Every case runs the real CLI in-process on pico models; the helpers are tests/test_errors.py's.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cli_helpers import assert_one_error_line, cli, digest
from pico import CORPUS
from safetensors.torch import load_file, save_file

from mergesmith.cli.main import main


def rewrite_tensors(model: Path, edit) -> None:
    tensors = load_file(model / "model.safetensors")
    edit(tensors)
    save_file(tensors, model / "model.safetensors", metadata={"format": "pt"})


# --- eval --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def eval_text(tmp_path_factory) -> Path:
    """About 600 pico tokens (tests/eval/conftest.py's text, which this directory does not see)."""
    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_text("\n".join(CORPUS * 5) + "\n", encoding="utf-8")
    return path


GOOD_ITEM = '{"question": "q", "choices": ["a", "b"], "answer": 0}\n'


def _bad_text(tmp_path: Path, case: str) -> tuple[list, list[str]]:
    """(CLI arguments after the model, fragments of the error line) of a bad --text / --tasks."""
    file = tmp_path / "input"
    if case == "text not utf-8":
        file.write_bytes(b"caf\xe9 au lait\n")
        return ["--text", file], [f"text file {file} is not UTF-8", "byte 3", "re-encode it as UTF-8"]
    if case == "empty text":
        file.write_text(" \n\n")
        return ["--text", file], [f"text file {file} is empty", "give a file with text"]
    if case == "text is a directory":
        return ["--text", tmp_path], [f"text file {tmp_path} is a directory", "give the UTF-8 text files in it"]
    if case == "task not utf-8":
        file.write_bytes(GOOD_ITEM.encode() + b'{"question": "\xff"}\n')
        return ["--tasks", file], [f"task file {file} is not UTF-8", "re-encode it as UTF-8"]
    if case == "task line not json":
        file.write_text(GOOD_ITEM + GOOD_ITEM + '{"question": "q", \n')
        return ["--tasks", file], [f"task file {file} line 3", "not valid JSON", "one JSON object"]
    if case == "task line missing a field":
        file.write_text(GOOD_ITEM + '{"question": "q", "choices": ["a", "b"]}\n')
        return ["--tasks", file], [f"task file {file} line 2", "exactly the keys answer, choices, question"]
    if case == "answer out of range":
        file.write_text('{"question": "q", "choices": ["a", "b"], "answer": 2}\n')
        return ["--tasks", file], [f"task file {file} line 1", "'answer' is 2", "(0..1)"]
    file.write_text("\n\n")  # empty task file
    return ["--tasks", file], [f"task file {file} has no items", "one JSON object per line"]


@pytest.mark.parametrize(
    "case",
    [
        "text not utf-8",
        "empty text",
        "text is a directory",
        "task not utf-8",
        "task line not json",
        "task line missing a field",
        "answer out of range",
        "empty task file",
    ],
)
def test_eval_bad_text_or_task_file(capsys, tmp_path, llama_family, case):
    args, fragments = _bad_text(tmp_path, case)
    before = digest(tmp_path, llama_family[0])
    assert_one_error_line(*cli(capsys, "eval", llama_family[0], *args, "--quiet"), *fragments)
    assert digest(tmp_path, llama_family[0]) == before


def _broken_model(model: Path, case: str) -> list[str]:
    config = model / "config.json"
    if case == "config not json":
        config.write_text("{broken")
        return [f"model '{model}'", f"{config} is not valid JSON", "re-save the model"]
    if case == "config not an object":
        config.write_text("[1, 2]")
        return [f"model '{model}'", f"{config} is not a JSON object"]
    if case == "truncated safetensors":
        data = (model / "model.safetensors").read_bytes()
        (model / "model.safetensors").write_bytes(data[:1000])
        return [f"model '{model}' does not load", "header", "re-save or re-download it"]
    if case == "tensor of the wrong shape":
        rewrite_tensors(model, lambda t: t.update({"model.norm.weight": t["model.norm.weight"][:32].clone()}))
        return [f"model '{model}'", "tensor model.norm.weight has shape [32]", "[64] by its config.json"]
    rewrite_tensors(model, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))  # missing tensor
    return [f"model '{model}'", "no tensor model.layers.1.mlp.up_proj.weight", "incomplete"]


@pytest.mark.parametrize(
    "case",
    ["config not json", "config not an object", "truncated safetensors", "tensor of the wrong shape", "missing tensor"],
)
def test_eval_broken_model_is_one_line(capsys, tmp_path, llama_family, eval_text, case):
    model = shutil.copytree(llama_family[0], tmp_path / "model")
    fragments = _broken_model(model, case)
    before = digest(model)
    assert_one_error_line(*cli(capsys, "eval", model, "--text", eval_text, "--context", 64, "--quiet"), *fragments)
    assert digest(model) == before


def test_eval_missing_model(capsys, tmp_path, eval_text):
    assert_one_error_line(*cli(capsys, "eval", tmp_path / "gone", "--text", eval_text), "model", "gone", "not found")


@pytest.mark.parametrize("where", ["missing folder", "a directory"])
def test_eval_json_target_is_checked_before_scoring(capsys, monkeypatch, tmp_path, llama_family, eval_text, where):
    from mergesmith.eval import api

    def never(*args, **kwargs):
        raise AssertionError("a model was loaded although --json cannot be written")

    monkeypatch.setattr(api, "load_model", never)
    target = tmp_path / "no" / "r.json" if where == "missing folder" else tmp_path
    fragment = f"folder {tmp_path / 'no'} does not exist" if where == "missing folder" else "is a directory"
    assert_one_error_line(
        *cli(capsys, "eval", llama_family[0], "--text", eval_text, "--json", target), "--json", fragment
    )
    assert not (tmp_path / "no").exists()


def test_text_shorter_than_one_window_is_scored_whole(capsys, tmp_path, llama_family):
    """Not an error: the one window is the whole text, and every token of it is scored."""
    text = tmp_path / "short.txt"
    text.write_text("Hello world!")
    out = tmp_path / "r.json"
    code, stdout, stderr = cli(
        capsys, "eval", llama_family[0], "--text", text, "--context", 64, "--json", out, "--quiet"
    )
    assert (code, stderr) == (0, ""), stderr
    scored = json.loads(out.read_text())["models"][0]["texts"][0]
    assert 1 <= scored["tokens"] < 64 and scored["bytes"] == len("Hello world!")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "short.txt"]  # no staged leftovers


# --- card --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def results_json(llama_family, eval_text, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("card") / "r.json"
    assert (
        main(
            [str(a) for a in ("eval", llama_family[0], "--text", eval_text, "--context", 64, "--json", out, "--quiet")]
        )
        == 0
    )
    return out


@pytest.mark.parametrize(
    "field,value,fragments",
    [
        (("models", 0, "texts", 0, "ppl"), "low", ["TextScore field 'ppl' is 'low', not a number"]),
        (("context",), None, ["EvalResult field 'context' is None, not a number"]),
        (("models", 0, "texts"), [{"text": "x"}], ["is malformed"]),
    ],
    ids=["ppl not a number", "context null", "text row malformed"],
)
def test_card_with_bad_results_json(capsys, tmp_path, results_json, field, value, fragments):
    data = json.loads(results_json.read_text())
    owner = data
    for key in field[:-1]:
        owner = owner[key]
    owner[field[-1]] = value
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    out = tmp_path / "model"
    out.mkdir()
    assert_one_error_line(
        *cli(capsys, "card", out, "--eval", bad), f"results file {bad}", *fragments, "mergesmith eval --json"
    )
    assert list(out.iterdir()) == []


def test_card_with_a_card_that_is_not_utf8(capsys, tmp_path, results_json):
    out = tmp_path / "model"
    out.mkdir()
    (out / "README.md").write_bytes(b"# caf\xe9\n")
    assert_one_error_line(*cli(capsys, "card", out, "--eval", results_json), f"{out / 'README.md'} is not UTF-8")
    assert sorted(p.name for p in out.iterdir()) == ["README.md"]


def test_card_missing_out(capsys, tmp_path, results_json):
    assert_one_error_line(*cli(capsys, "card", tmp_path / "nope", "--eval", results_json), "nope", "not found")
    assert not (tmp_path / "nope").exists()
