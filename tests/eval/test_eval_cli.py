"""``mergesmith eval`` and ``mergesmith card --eval`` end to end, and their one-line errors."""

from __future__ import annotations

import json

import pytest
from test_parity import models_recipe

from mergesmith.api import merge
from mergesmith.cli.main import main
from mergesmith.eval.results import EvalResult, load_results, metric_rows
from mergesmith.output.card import eval_rows_from_card, recipe_from_card


def cli(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_one_error_line(result, *fragments) -> None:
    code, out, err = result
    assert code == 2, err
    assert out == "" and len(err.splitlines()) == 1 and err.startswith("error: ")
    for fragment in fragments:
        assert fragment in err, (fragment, err)


@pytest.fixture(scope="module")
def task_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("task") / "mini.jsonl"
    path.write_text('{"question": "Hello", "choices": ["world", "sea"], "answer": 0}\n'
                    '{"question": "The quick brown", "choices": ["fox", "dog", "cat"], "answer": 0}\n')
    return path


@pytest.fixture(scope="module")
def results(llama_family, eval_text, task_file, tmp_path_factory):
    """One CLI run over the llama family with the base as reference: (exit, stdout, results path)."""
    out = tmp_path_factory.mktemp("results") / "r.json"
    base, ft1, ft2 = llama_family
    code = main([str(a) for a in ("eval", ft1, ft2, "--ref", base, "--text", eval_text, "--tasks", task_file,
                                  "--context", 64, "--json", out, "--quiet")])
    return code, out


def test_eval_prints_a_ranked_table_and_writes_json(results, llama_family, capsys):
    code, path = results
    assert code == 0
    result = load_results(path)
    assert [m.model for m in result.models] == [str(p) for p in llama_family]
    assert result.models[0].is_ref and result.ref == str(llama_family[0])
    assert (result.context, result.stride, result.dtype) == (64, 32, "float32")
    bpb = [m.texts[0].bits_per_byte for m in result.ranked()]
    assert bpb == sorted(bpb)
    assert all(m.texts[0].kl.mean > 0 for m in result.models[1:])
    assert [t.items for t in result.models[0].tasks] == [2]
    assert EvalResult.from_dict(json.loads(path.read_text())) == result  # JSON round trip


def test_eval_table_rows(llama_family, eval_text, capsys):
    code, out, err = cli(capsys, "eval", llama_family[2], llama_family[1], "--ref", llama_family[0],
                         "--text", eval_text, "--context", 64, "--quiet")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["rank", "model", "ppl", "corpus"]
    rows = [line.split() for line in lines[1:4]]
    assert [r[0] for r in rows] == ["1", "2", "3"]
    bpb = [float(r[4 if "(ref)" in r else 3]) for r in rows]
    assert bpb == sorted(bpb)
    assert sum("(ref)" in line for line in lines) == 1
    assert lines[-1].startswith("# ranked by mean bits per byte")


@pytest.mark.parametrize("case", ["missing model", "missing text", "bad json", "bad answer", "missing keys",
                                  "stride", "gguf", "unknown task", "dtype", "device"])
def test_eval_bad_input_is_one_line_exit_2(case, llama_family, eval_text, task_file, tmp_path, capsys):
    model = llama_family[0]
    bad = tmp_path / "bad.jsonl"
    args = {
        "missing model": ([tmp_path / "nope"], ["nope", "not found"]),
        "missing text": ([model, "--text", tmp_path / "none.txt"], ["none.txt", "--text"]),
        "bad json": ([model, "--tasks", bad], ["bad.jsonl line 2", "not valid JSON"]),
        "bad answer": ([model, "--tasks", bad], ["bad.jsonl line 1", "'answer' is 5"]),
        "missing keys": ([model, "--tasks", bad], ["bad.jsonl line 1", "exactly the keys"]),
        "stride": ([model, "--text", eval_text, "--context", 32, "--stride", 32], ["stride 32", "stride < context"]),
        "gguf": ([tmp_path / "m.gguf"], ["m.gguf", "mergesmith merge"]),
        "unknown task": ([model, "--tasks", "no_such_task"], ["no_such_task", "bundled"]),
        "dtype": ([model, "--text", eval_text, "--dtype", "int8"], ["int8", "float32"]),
        "device": ([model, "--text", eval_text, "--device", "tpu9"], ["tpu9", "not a torch device"]),
    }[case]
    bad.write_text({
        "bad json": '{"question": "q", "choices": ["a", "b"], "answer": 0}\n{"question": \n',
        "bad answer": '{"question": "q", "choices": ["a", "b"], "answer": 5}\n',
        "missing keys": '{"question": "q", "choices": ["a", "b"], "label": 0}\n',
    }.get(case, ""))
    if case == "gguf":
        (tmp_path / "m.gguf").write_bytes(b"GGUF")
    assert_one_error_line(cli(capsys, "eval", *args[0], "--quiet"), *args[1])


def test_context_longer_than_the_model_is_refused(llama_family, eval_text, capsys):
    assert_one_error_line(cli(capsys, "eval", llama_family[0], "--text", eval_text, "--context", 512),
                          "context 512", "max_position_embeddings 256")


# --- card --------------------------------------------------------------------------------------


def test_card_section_is_written_and_round_trips(results, llama_family, tmp_path, capsys):
    _, path = results
    out = tmp_path / "merged"
    merge(models_recipe("linear", llama_family, "float32"), out)
    before = (out / "README.md").read_text()
    code, stdout, err = cli(capsys, "card", out, "--eval", path, "--model", llama_family[1])
    assert (code, err) == (0, "")
    card = (out / "README.md").read_text()
    assert card.startswith(before.rstrip("\n"))               # the merge card is kept as is
    assert recipe_from_card(card) == recipe_from_card(before)
    score = load_results(path).model(str(llama_family[1]))
    rows = eval_rows_from_card(card)
    assert rows == metric_rows(score)
    assert rows[0] == ("perplexity (corpus)", f"{score.texts[0].ppl:.4f}")
    assert any(metric.startswith("KL vs ") for metric, _ in rows)
    assert "Context length: 64 tokens, stride 32" in card and load_results(path).date in card
    # a second run replaces the section instead of adding one
    assert cli(capsys, "card", out, "--eval", path, "--model", llama_family[2])[0] == 0
    again = (out / "README.md").read_text()
    assert again.count("## Evaluation results") == 1
    assert eval_rows_from_card(again) == metric_rows(load_results(path).model(str(llama_family[2])))


def test_card_section_before_another_section_is_replaced_in_place(results, llama_family, tmp_path, capsys):
    _, path = results
    out = tmp_path / "m"
    out.mkdir()
    (out / "README.md").write_text("# m\n\n## Evaluation results\n\nold\n\n## Licence\n\nMIT\n")
    assert cli(capsys, "card", out, "--eval", path, "--model", llama_family[0])[0] == 0
    card = (out / "README.md").read_text()
    assert "old" not in card and card.endswith("\n\n## Licence\n\nMIT\n") and card.startswith("# m\n\n## Evaluation results\n")
    assert len(eval_rows_from_card(card)) == len(metric_rows(load_results(path).models[0]))


def test_card_errors_are_one_line(results, tmp_path, capsys):
    _, path = results
    out = tmp_path / "m"
    out.mkdir()
    assert_one_error_line(cli(capsys, "card", out, "--eval", path), "3 models", "--model")
    assert_one_error_line(cli(capsys, "card", out, "--eval", tmp_path / "none.json"), "none.json", "--json")
    (tmp_path / "x.json").write_text("{}")
    assert_one_error_line(cli(capsys, "card", out, "--eval", tmp_path / "x.json"), "x.json", "mergesmith-eval/1")
    assert_one_error_line(cli(capsys, "card", tmp_path / "nodir", "--eval", path), "nodir")
    assert not (out / "README.md").exists()
