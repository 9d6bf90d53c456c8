"""``mergesmith eval --lm-eval``: lm-eval-harness tasks from local data, offline, against our own scorer.

Our multiple-choice scorer and lm-eval's ``multiple_choice`` both rank choices by the summed
log-likelihood of ``" " + choice`` after ``Question: ...\\nAnswer:``, so on the same items the
per-choice log-likelihoods, hence ``acc``, must agree item by item. The length-normalised
accuracies legitimately differ: lm-eval divides by ``len(choice)`` in characters (no leading
space), we divide by the UTF-8 bytes of ``" " + choice``. The tests recompute each from the shared
log-likelihoods (two of the items are non-ASCII, where characters and bytes differ too).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import socket
import sys
from pathlib import Path

import pytest

from mergesmith.cli.main import main
from mergesmith.eval.data import DATA_DIR, continuation, prompt, read_task
from mergesmith.eval.results import load_results, metric_rows
from mergesmith.output.card import eval_rows_from_card

HAS_LM_EVAL = importlib.util.find_spec("lm_eval") is not None
needs_lm_eval = pytest.mark.skipif(
    not HAS_LM_EVAL, reason="lm-eval is not installed (pip install 'mergesmith[lmeval]')"
)

TASK_YAML = Path(__file__).parent / "data" / "lmeval_task.yaml"
# general_knowledge items: eight ASCII ones, then "Eyjafjallajökull" and "−273.15" (multi-byte characters)
ITEMS = (0, 1, 2, 3, 4, 5, 6, 7, 65, 68)
CONTEXT = 128


def cli(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module", autouse=True)
def offline():
    """No network at all: Hub offline flags, and any internet socket connection fails."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_DATASETS_OFFLINE", "1")
        # huggingface_hub and datasets read those variables once, at import (already done here)
        for module, attr in (("huggingface_hub.constants", "HF_HUB_OFFLINE"), ("datasets.config", "HF_HUB_OFFLINE")):
            if importlib.util.find_spec(module.split(".")[0]):
                mp.setattr(f"{module}.{attr}", True)
        connect = socket.socket.connect

        def refuse(sock, address):
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                raise AssertionError(f"network connection to {address} during an offline evaluation")
            return connect(sock, address)

        mp.setattr(socket.socket, "connect", refuse)
        yield


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    """The task YAML from tests/eval/data beside items.jsonl (a few general_knowledge items)."""
    root = tmp_path_factory.mktemp("lmeval")
    lines = (DATA_DIR / "tasks" / "general_knowledge.jsonl").read_text(encoding="utf-8").splitlines()
    (root / "items.jsonl").write_text("".join(lines[i] + "\n" for i in ITEMS), encoding="utf-8")
    shutil.copy(TASK_YAML, root / "task.yaml")
    return root


@pytest.fixture(scope="module")
def cli_results(llama_family, task_dir, tmp_path_factory):
    """One `mergesmith eval --tasks items.jsonl --lm-eval task.yaml --json` run (cwd elsewhere)."""
    out = tmp_path_factory.mktemp("out") / "r.json"
    code = main(
        [
            str(a)
            for a in (
                "eval",
                llama_family[1],
                llama_family[2],
                "--tasks",
                task_dir / "items.jsonl",
                "--lm-eval",
                task_dir / "task.yaml",
                "--context",
                CONTEXT,
                "--json",
                out,
                "--quiet",
            )
        ]
    )
    return code, out


def our_loglikelihoods(loaded, task) -> dict[tuple[int, int], float]:
    import torch

    from mergesmith.eval.choice import _loglikelihoods, _sequences

    seqs = _sequences(loaded, task, 0, CONTEXT, None)
    with torch.no_grad():
        return {(s.item, s.choice): v for s, v in zip(seqs, _loglikelihoods(loaded, seqs, pad_id=0))}


@needs_lm_eval
def test_scores_land_in_the_table_and_the_json(cli_results, llama_family, task_dir, tmp_path, capsys):
    code, path = cli_results
    assert code == 0
    result = load_results(path)
    for score in result.models:
        lm = {s.metric: s for s in score.lm_eval}
        assert set(lm) == {"acc", "acc_norm"}
        assert [s.name for s in score.lm_eval] == ["lm-eval:gk_local/acc", "lm-eval:gk_local/acc_norm"]
        assert all((s.items, s.fewshot, s.filter) == (len(ITEMS), 0, "none") for s in score.lm_eval)
        assert all(s.source == str(task_dir / "task.yaml") for s in score.lm_eval)
        n, acc = len(ITEMS), lm["acc"].value
        # lm-eval's stderr is the sample standard deviation (n - 1) over sqrt(n)
        assert lm["acc"].stderr == pytest.approx((acc * (1 - acc) / (n - 1)) ** 0.5)
    # a second run, on a directory (its group YAML is skipped), prints the same numbers in the table
    shutil.copytree(task_dir, tmp_path / "suite")
    (tmp_path / "suite" / "group.yaml").write_text("group: g\ntask: [gk_local]\n")
    code, out, err = cli(
        capsys, "eval", llama_family[1], "--lm-eval", tmp_path / "suite", "--context", CONTEXT, "--quiet"
    )
    assert (code, err) == (0, "")
    lines = out.splitlines()
    block = lines.index("lm-eval")  # the view's lm-eval block: a header, then one row per model
    head, row = lines[block + 1].split(), lines[block + 2].split()
    assert head == ["model", "gk_local/acc", "gk_local/acc_norm"]
    first = result.model(str(llama_family[1])).lm_eval
    assert row[2:4] == [f"{first[0].value:.3f}", f"{first[1].value:.3f}"]
    assert any(line.startswith("# ranked by mean accuracy over tasks") for line in lines[-2:])


@needs_lm_eval
def test_acc_equals_our_multiple_choice_accuracy(cli_results):
    """The same run scored the same items both ways: acc is equal, acc_norm is recomputed."""
    _, path = cli_results
    for score in load_results(path).models:
        ours, lm = score.tasks[0], {s.metric: s.value for s in score.lm_eval}
        assert ours.items == len(ITEMS)
        assert lm["acc"] == ours.acc


def argmax(scores: list[float]) -> int:
    return max(range(len(scores)), key=scores.__getitem__)


@needs_lm_eval
def test_loglikelihoods_agree_item_by_item(llama_family, task_dir):
    """lm-eval's per-choice log-likelihoods (its logged samples) against ours on the same prompts."""
    from mergesmith.eval import lmeval
    from mergesmith.eval.models import load_model

    loaded = load_model(str(llama_family[2]))
    task = read_task(task_dir / "items.jsonl")
    ours = our_loglikelihoods(loaded, task)
    raw = lmeval.run(
        loaded,
        lmeval.load_tasks([str(task_dir / "task.yaml")]),
        fewshot=0,
        batch_size=4,
        context=CONTEXT,
        log_samples=True,
    )
    samples = sorted(raw["samples"]["gk_local"], key=lambda s: s["doc_id"])
    assert [s["doc_id"] for s in samples] == list(range(len(ITEMS)))
    for i, (sample, item) in enumerate(zip(samples, task.items)):
        assert sample["arguments"] == [(prompt(task, i), continuation(c)) for c in item.choices]
        theirs = [ll for ll, _greedy in sample["filtered_resps"]]
        mine = [ours[(i, j)] for j in range(len(item.choices))]
        assert theirs == pytest.approx(mine, rel=1e-4, abs=1e-4), item.question
        assert len(set(mine)) == len(mine)  # no ties: argmax below is well defined
        assert sample["acc"] == float(argmax(mine) == item.answer)
        by_chars = [ll / len(c) for ll, c in zip(mine, item.choices)]  # lm-eval's acc_norm divisor
        assert sample["acc_norm"] == float(argmax(by_chars) == item.answer)


@needs_lm_eval
def test_our_acc_norm_from_the_same_loglikelihoods(llama_family, task_dir, cli_results):
    """Ours divides by the bytes of " " + choice: recomputed here from the log-likelihoods."""
    from mergesmith.eval.models import load_model

    _, path = cli_results
    task = read_task(task_dir / "items.jsonl")
    ours = our_loglikelihoods(load_model(str(llama_family[1])), task)
    hits = 0
    for i, item in enumerate(task.items):
        hits += (
            argmax([ours[(i, j)] / len(continuation(c).encode("utf-8")) for j, c in enumerate(item.choices)])
            == item.answer
        )
    assert load_results(path).model(str(llama_family[1])).tasks[0].acc_norm == hits / len(ITEMS)


@needs_lm_eval
def test_card_shows_the_lm_eval_scores(cli_results, llama_family, tmp_path, capsys):
    _, path = cli_results
    out = tmp_path / "m"
    out.mkdir()
    # The card takes only OUT's own results: the same scores, recorded under OUT's path.
    own = tmp_path / "results.json"
    own.write_text(Path(path).read_text().replace(json.dumps(str(llama_family[2])), json.dumps(str(out))))
    assert cli(capsys, "card", out, "--eval", own, "--model", out)[:2] == (0, "")
    card = (out / "README.md").read_text()
    score = load_results(own).model(str(out))
    rows = eval_rows_from_card(card)
    assert rows == metric_rows(score)
    acc = next(s for s in score.lm_eval if s.metric == "acc")
    assert ("lm-eval:gk_local/acc (0-shot)", f"{acc.value:.4f} ± {acc.stderr:.4f}") in rows
    assert f"lm-eval:gk_local ({len(ITEMS)} items)" in card


# --- one-line errors -----------------------------------------------------------------------------


def assert_one_error_line(result, *fragments) -> None:
    code, out, err = result
    assert code == 2, err
    assert out == "" and len(err.splitlines()) == 1 and err.startswith("error: "), err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


def write_yaml(path: Path, **changes) -> Path:
    text = TASK_YAML.read_text()
    for old, new in changes.items():
        text = text.replace(old, new)
    path.write_text(text)
    return path


@needs_lm_eval
def test_unknown_task_name(llama_family, capsys):
    assert_one_error_line(
        cli(capsys, "eval", llama_family[0], "--lm-eval", "arc_eazy", "--quiet"),
        "lm-eval task 'arc_eazy'",
        "did you mean arc_easy",
        "task YAML",
    )


@needs_lm_eval
@pytest.mark.parametrize("case", ["missing data file", "hub dataset", "bad template", "missing yaml", "not a task"])
def test_bad_task_yaml(case, llama_family, task_dir, tmp_path, capsys):
    yaml_path = tmp_path / "t.yaml"
    shutil.copy(task_dir / "items.jsonl", tmp_path)
    if case == "missing data file":
        write_yaml(yaml_path, **{"items.jsonl": "nowhere.jsonl"})
        want = ["gk_local", str(tmp_path / "nowhere.jsonl"), "not found", "data_files"]
    elif case == "hub dataset":
        write_yaml(
            yaml_path,
            **{
                "dataset_path: json": "dataset_path: allenai/ai2_arc\ndataset_name: ARC-Easy",
                "test: items.jsonl": "test: ARC-Easy/test-00000-of-00001.parquet",
            },
        )
        want = [
            "lm-eval task 'gk_local'",
            "needs the Hub dataset 'allenai/ai2_arc'",
            "unreachable offline",
            "data_files",
        ]
    elif case == "bad template":
        write_yaml(yaml_path, **{"{{question}}": "{{nope}}"})
        want = ["lm-eval task 'gk_local'", "'nope' is undefined", "YAML"]
    elif case == "missing yaml":
        yaml_path = tmp_path / "none.yaml"
        want = ["none.yaml", "not found"]
    else:
        yaml_path.write_text("group: g\ntask: [gk_local]\n")
        want = ["t.yaml", "task: NAME"]
    assert_one_error_line(cli(capsys, "eval", llama_family[0], "--lm-eval", yaml_path, "--quiet"), *want)


def test_gguf_models_are_refused_before_anything_loads(tmp_path):
    from mergesmith.errors import InputFormatError
    from mergesmith.eval.lmeval import check_models

    check_models([str(tmp_path)])
    with pytest.raises(InputFormatError, match="m.gguf.*Hugging Face model directories"):
        check_models([str(tmp_path), str(tmp_path / "m.gguf")])


def test_missing_lm_eval_names_the_extra(llama_family, task_dir, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval → ImportError
    assert_one_error_line(
        cli(capsys, "eval", llama_family[0], "--lm-eval", task_dir / "task.yaml", "--quiet"),
        "--lm-eval",
        "pip install 'mergesmith[lmeval]'",
    )


@needs_lm_eval
def test_results_without_lm_eval_scores_still_load(cli_results, tmp_path):
    """Files written before --lm-eval existed have no "lm_eval" key."""
    _, path = cli_results
    data = json.loads(Path(path).read_text())
    for m in data["models"]:
        del m["lm_eval"]
    (tmp_path / "old.json").write_text(json.dumps(data))
    assert all(m.lm_eval == () for m in load_results(tmp_path / "old.json").models)


def test_scores_read_groups_filters_and_missing_stderrs():
    """lm-eval's result keys are ``metric,filter``; groups have no sample counts; "N/A" is no stderr."""
    from mergesmith.eval.lmeval import scores

    raw = {
        "results": {
            "grp": {"alias": "grp", "acc,none": 0.5, "acc_stderr,none": "N/A"},
            "gen": {
                "alias": " - gen",
                "exact_match,strict-match": 0.25,
                "exact_match_stderr,strict-match": 0.1,
                "exact_match,flexible": 0.75,
                "exact_match_stderr,flexible": float("nan"),
                "sample_len": 4,
            },
        },
        "n-samples": {"gen": {"original": 8, "effective": 4}},
        "n-shot": {"gen": 3},
    }
    got = scores(raw, {"grp": "grp", "gen": "grp"})
    assert [(s.name, s.value, s.stderr, s.items, s.fewshot, s.source) for s in got] == [
        ("lm-eval:grp/acc", 0.5, None, None, None, "grp"),
        ("lm-eval:gen/exact_match,strict-match", 0.25, 0.1, 4, 3, "grp"),
        ("lm-eval:gen/exact_match,flexible", 0.75, None, 4, 3, "grp"),
    ]
