"""``mergesmith eval`` and ``mergesmith card --eval`` end to end, and their one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from recipes import models_recipe

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
    path.write_text(
        '{"question": "Hello", "choices": ["world", "sea"], "answer": 0}\n'
        '{"question": "The quick brown", "choices": ["fox", "dog", "cat"], "answer": 0}\n'
    )
    return path


@pytest.fixture(scope="module")
def results(llama_family, eval_text, task_file, tmp_path_factory):
    """One CLI run over the llama family with the base as reference: (exit, stdout, results path)."""
    out = tmp_path_factory.mktemp("results") / "r.json"
    base, ft1, ft2 = llama_family
    code = main(
        [
            str(a)
            for a in (
                "eval",
                ft1,
                ft2,
                "--ref",
                base,
                "--text",
                eval_text,
                "--tasks",
                task_file,
                "--context",
                64,
                "--json",
                out,
                "--quiet",
            )
        ]
    )
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


def test_eval_view_ranks_then_a_block_per_text(llama_family, eval_text, capsys):
    code, out, err = cli(
        capsys,
        "eval",
        llama_family[2],
        llama_family[1],
        "--ref",
        llama_family[0],
        "--text",
        eval_text,
        "--context",
        64,
        "--quiet",
    )
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].split() == ["model", "type", "mean", "bpb", "seconds"]
    ranking = [line.split() for line in lines[1:4]]
    assert [r[0] for r in ranking] == ["#1", "#2", "#3"]
    assert {r[1] for r in ranking} == {str(p) for p in llama_family}  # full names, here short enough
    assert all(r[-3] == "float32" for r in ranking) and sum("(ref)" in line for line in lines[1:4]) == 1
    mean_bpb = [float(r[-2]) for r in ranking]
    assert mean_bpb == sorted(mean_bpb)
    block = lines.index("text corpus: perplexity, bits per byte, KL(ref ‖ model) per token")
    assert lines[block + 1].split() == ["model", "ppl", "bpb", "KL", "mean", "KL", "p99", "top-1", "Δppl"]
    rows = [line.split() for line in lines[block + 2 : block + 5]]
    assert [r[0] for r in rows] == ["#1", "#2", "#3"]
    assert [float(r[4 if "(ref)" in r else 3]) for r in rows] == mean_bpb  # one text: its bpb is the mean
    assert next(r for r in rows if "(ref)" in r)[-4:] == ["-"] * 4  # no KL of the reference to itself
    assert lines[-1].startswith("# ranked by mean bits per byte") or lines[-2].startswith(
        "# ranked by mean bits per byte"
    )


@pytest.mark.parametrize("count", [1, 2, 5])
def test_eval_view_fits_100_columns(count, noisy_llamas, eval_text, task_file, tmp_path, capsys):
    """Texts (a file and a bundled name), KL against a reference and two choice tasks: no line over 100
    characters for 1, 2 or 5 models, even when a model's path is longer than the terminal is wide."""
    models = list(noisy_llamas.values())[:count]
    long_name = tmp_path / ("a-merge-with-a-very-long-descriptive-name-" * 3 + "v2")
    long_name.symlink_to(models[-1], target_is_directory=True)
    models[-1] = long_name
    code, out, err = cli(
        capsys,
        "eval",
        *models,
        "--ref",
        models[0],
        "--text",
        eval_text,
        "kjv_heldout",
        "--tasks",
        task_file,
        "general_knowledge",
        "--context",
        64,
        "--limit",
        2,
        "--quiet",
    )
    assert code == 0 and err == "", err
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 100, "\n".join(line for line in lines if len(line) > 100)
    assert sum("(ref)" in line for line in lines) == 4  # in the ranking, both texts' blocks and the tasks' block
    assert "text kjv_heldout: perplexity" in out and "multiple choice: accuracy" in out
    assert len([line for line in lines if line.startswith(("#1 ", "#2 ", "#3 ", "#4 ", "#5 "))]) == count * 4
    assert "…" in out and str(long_name) not in out  # the long path, shortened from the left


@pytest.mark.parametrize(
    "case",
    [
        "missing model",
        "missing text",
        "bad json",
        "bad answer",
        "missing keys",
        "stride",
        "gguf",
        "unknown task",
        "dtype",
        "device",
    ],
)
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
    bad.write_text(
        {
            "bad json": '{"question": "q", "choices": ["a", "b"], "answer": 0}\n{"question": \n',
            "bad answer": '{"question": "q", "choices": ["a", "b"], "answer": 5}\n',
            "missing keys": '{"question": "q", "choices": ["a", "b"], "label": 0}\n',
        }.get(case, "")
    )
    if case == "gguf":
        (tmp_path / "m.gguf").write_bytes(b"GGUF")
    assert_one_error_line(cli(capsys, "eval", *args[0], "--quiet"), *args[1])


def test_context_longer_than_the_model_is_refused(llama_family, eval_text, capsys):
    assert_one_error_line(
        cli(capsys, "eval", llama_family[0], "--text", eval_text, "--context", 512),
        "context 512",
        "max_position_embeddings 256",
    )


# --- card --------------------------------------------------------------------------------------


def results_as(path, model, out, tmp_path):
    """The results of ``model`` recorded as ``out``'s (a card takes only its own model's results),
    and the rows its card should show: the KL reference by name, not by path."""
    data = json.loads(path.read_text())
    for entry in data["models"]:
        entry["model"] = str(out) if entry["model"] == str(model) else entry["model"]
    renamed = tmp_path / f"{model.name}-as-{out.name}.json"
    renamed.write_text(json.dumps(data))
    ref = load_results(path).ref
    rows = [(m.replace(ref, Path(ref).name), v) for m, v in metric_rows(load_results(path).model(str(model)))]
    return renamed, rows


def test_card_section_is_written_and_round_trips(results, llama_family, tmp_path, capsys):
    _, path = results
    out = tmp_path / "merged"
    merge(models_recipe("linear", llama_family, "float32"), out)
    before = (out / "README.md").read_text()
    mine, want = results_as(path, llama_family[1], out, tmp_path)
    code, stdout, err = cli(capsys, "card", out, "--eval", mine, "--model", out)
    assert (code, err) == (0, "")
    card = (out / "README.md").read_text()
    assert card.startswith(before.rstrip("\n"))  # the merge card is kept as is
    assert recipe_from_card(card) == recipe_from_card(before)
    score = load_results(path).model(str(llama_family[1]))
    rows = eval_rows_from_card(card)
    assert rows == want
    assert rows[0] == ("perplexity (corpus)", f"{score.texts[0].ppl:.4f}")
    assert any(metric.startswith(f"KL vs {llama_family[0].name} ") for metric, _ in rows)
    assert "Context length: 64 tokens, stride 32" in card and load_results(path).date in card
    # a second run replaces the section instead of adding one
    mine, want = results_as(path, llama_family[2], out, tmp_path)
    assert cli(capsys, "card", out, "--eval", mine)[0] == 0
    again = (out / "README.md").read_text()
    assert again.count("## Evaluation results") == 1
    assert eval_rows_from_card(again) == want


def test_card_section_before_another_section_is_replaced_in_place(results, llama_family, tmp_path, capsys):
    _, path = results
    out = tmp_path / "m"
    out.mkdir()
    (out / "README.md").write_text("# m\n\n## Evaluation results\n\nold\n\n## Licence\n\nMIT\n")
    mine, _ = results_as(path, llama_family[0], out, tmp_path)
    assert cli(capsys, "card", out, "--eval", mine, "--model", out)[0] == 0
    card = (out / "README.md").read_text()
    assert (
        "old" not in card
        and card.endswith("\n\n## Licence\n\nMIT\n")
        and card.startswith("# m\n\n## Evaluation results\n")
    )
    assert len(eval_rows_from_card(card)) == len(metric_rows(load_results(path).models[0]))


def test_card_errors_are_one_line(results, llama_family, tmp_path, capsys):
    _, path = results
    out = tmp_path / "m"
    out.mkdir()
    assert_one_error_line(cli(capsys, "card", out, "--eval", path), "3 models", f"none is {out}")
    assert_one_error_line(
        cli(capsys, "card", out, "--eval", path, "--model", llama_family[1]),
        f"results of {llama_family[1]}, not of {out}",
    )
    assert_one_error_line(cli(capsys, "card", out, "--eval", tmp_path / "none.json"), "none.json", "--json")
    (tmp_path / "x.json").write_text("{}")
    assert_one_error_line(cli(capsys, "card", out, "--eval", tmp_path / "x.json"), "x.json", "mergesmith-eval/1")
    assert_one_error_line(cli(capsys, "card", tmp_path / "nodir", "--eval", path), "nodir")
    assert not (out / "README.md").exists()
