"""``--log-format json``: every stderr line is a JSON event, stdout one result object; and the
export bars, in text, name the final file and count what the tools report."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import yaml
from cli_helpers import cli
from recipes import models_recipe

import mergesmith.gguf.export as export

SEARCH_FITNESS = {"terms": [{"nll": ["kjv_fitness"]}], "context": 32, "limit": 1}


def parse(out: str, err: str, command: str) -> tuple[dict, list[dict]]:
    """Every line of both streams parses; stdout is one result object; stderr starts with a start event."""
    events = [json.loads(line) for line in err.splitlines()]
    results = [json.loads(line) for line in out.splitlines()]
    assert len(results) == 1 and results[0]["event"] == "result" and results[0]["command"] == command
    assert events[0] == {"event": "start", "command": command, "t": events[0]["t"]}
    assert all(isinstance(e["t"], float) for e in events + results)
    return results[0], events


def test_merge(llama_family, tmp_path, capsys):
    recipe = tmp_path / "r.yml"
    recipe.write_text(models_recipe("linear", llama_family, "float32"))
    code, out, err = cli(capsys, "merge", recipe, tmp_path / "out", "--log-format", "json")
    assert code == 0, err
    result, events = parse(out, err, "merge")
    assert result["out"] == str(tmp_path / "out") and result["tensors"] > 0 and result["gguf"] is None
    bars = [e for e in events if e["event"] == "progress"]
    assert bars[0]["done"] == 0 and bars[-1]["done"] == bars[-1]["total"] == result["tensors"]
    assert all(e["task"] == "merging" and e["unit"] == "tensor" for e in bars)
    assert any(e["event"] == "status" for e in events)


def test_error_is_a_json_event_too(tmp_path, capsys):
    code, out, err = cli(capsys, "merge", tmp_path / "none.yml", tmp_path / "out", "--log-format", "json")
    assert code == 2 and out == ""
    events = [json.loads(line) for line in err.splitlines()]
    assert events[-1]["event"] == "error" and events[-1]["exit_code"] == 2 and "none.yml" in events[-1]["message"]


def test_eval(llama_family, tmp_path, capsys):
    code, out, err = cli(
        capsys,
        "eval",
        llama_family[1],
        "--ref",
        llama_family[0],
        "--text",
        "kjv_heldout",
        "--context",
        32,
        "--limit",
        2,
        "--log-format",
        "json",
        "--json",
        tmp_path / "r.json",
    )
    assert code == 0, err
    result, events = parse(out, err, "eval")
    assert [m["model"] for m in result["models"]] == [str(llama_family[0]), str(llama_family[1])]
    assert result["format"] == "mergesmith-eval/1" and result["types"] == {}
    assert json.loads((tmp_path / "r.json").read_text())["models"] == result["models"]
    windows = [e for e in events if e["event"] == "progress" and e["task"].endswith(": kjv_heldout")]
    assert {e["task"] for e in windows} == {f"{Path(m).name}: kjv_heldout" for m in llama_family[:2]}
    assert all(e["total"] == 2 for e in windows) and {e["done"] for e in windows} == {0, 2}


def test_search(llama_family, tmp_path, capsys):
    base, ft1, ft2 = map(str, llama_family)
    space = tmp_path / "space.yml"
    space.write_text(
        yaml.safe_dump(
            {
                "recipe": {
                    "merge_method": "task_arithmetic",
                    "base_model": base,
                    "models": [{"model": base}, {"model": ft1}, {"model": ft2}],
                    "parameters": {"lambda": "search"},
                },
                "optimizer": "random",
                "fitness": SEARCH_FITNESS,
                "report": {"texts": ["kjv_heldout"], "limit": 1, "top": 1},
            }
        )
    )
    code, out, err = cli(capsys, "search", space, tmp_path / "s", "--budget", 2, "--threads", 1, "--log-format", "json")
    assert code == 0, err
    result, events = parse(out, err, "search")
    candidates = [e for e in events if e["event"] == "candidate"]
    assert [e["scored"] for e in candidates] == [1, 2] and all(e["budget"] == 2 for e in candidates)
    assert sorted(r["index"] for r in result["leaderboard"]) == [0, 1]
    assert result["leaderboard"][0]["fitness"] == min(e["fitness"] for e in candidates)
    assert [r["name"] for r in result["report"]] == [f"#{result['leaderboard'][0]['index']}"]
    assert "scoring the held-out report: 1 best candidates" in [e.get("message") for e in events]


# --- export-gguf: the converter and the quantizer stood in for, the rest real --------------------


@pytest.fixture
def fake_tools(monkeypatch):
    """llama.cpp's converter and quantizer as functions that name tensors as the real ones log them."""
    calls = []

    def convert(model_dir, out_path, outtype, *, converter=None, on_tensor=None):
        calls.append(("convert", Path(out_path).name))
        for i in range(export.count_tensors(model_dir)):
            on_tensor(f"t{i}")
        Path(out_path).write_bytes(b"GGUF")

    def quantize(source, out_path, quant, *, threads=None, on_tensor=None):
        calls.append(("quantize", Path(out_path).name, threads))
        for i in range(7):
            on_tensor(f"t{i}", 7)
        Path(out_path).write_bytes(b"GGUF")

    monkeypatch.setattr(export, "convert_to_gguf", convert)
    monkeypatch.setattr(export, "quantize_gguf", quantize)
    monkeypatch.setattr(export, "ensure_converter", lambda converter=None: Path("converter"))
    monkeypatch.setattr(export, "import_llama_cpp", lambda: None)
    monkeypatch.setattr(export, "bits_per_weight", lambda path: 4.5)
    return calls


def test_export_bars_name_the_final_file_and_show_no_eta(fake_tools, llama_family, tmp_path, capsys):
    code, out, err = cli(capsys, "export-gguf", llama_family[0], tmp_path / "g", "--quant", "q4_k_m", "--no-card")
    assert code == 0, err
    name = f"{llama_family[0].name}-Q4_K_M.gguf"
    assert [c[:2] for c in fake_tools] == [
        ("convert", f".{llama_family[0].name}-F16.gguf.partial-{os.getpid()}"),
        ("quantize", f".{name}.partial-{os.getpid()}"),
    ]
    assert ".partial" not in err and f"{name}: quantizing: 100%" in err and "7/7 tensors" in err
    assert f"{llama_family[0].name}-F16.gguf (temporary, the quantizer's input): writing" in err
    assert not re.search(r"<\d|\?it/s|it/s\]", err)  # no ETA, no rate
    assert name in out and sorted(p.name for p in (tmp_path / "g").iterdir()) == [name]


def test_export_json(fake_tools, llama_family, tmp_path, capsys):
    code, out, err = cli(
        capsys,
        "export-gguf",
        llama_family[0],
        tmp_path / "g",
        "--quant",
        "f16,q8_0",
        "--no-card",
        "--threads",
        3,
        "--log-format",
        "json",
    )
    assert code == 0, err
    result, events = parse(out, err, "export-gguf")
    assert [r["quant"] for r in result["report"]["rows"]] == ["f16", "q8_0"]
    assert fake_tools[-1][2] == 3  # --threads reaches the quantizer
    done = {e["task"]: e["done"] for e in events if e["event"] == "progress"}
    stem = llama_family[0].name
    assert done[f"{stem}-Q8_0.gguf: quantizing"] == 7 and f"{stem}-F16.gguf: writing" in done
    assert not any(".partial" in e["task"] for e in events if e["event"] == "progress")


def test_merge_reports_its_steps_as_status_events(llama_family, tmp_path, capsys):
    """``mergesmith.api.merge(..., status=)``: the library's steps, where no bar speaks, become status
    events (and, on a terminal, the status line)."""
    recipe = tmp_path / "r.yml"
    recipe.write_text(models_recipe("linear", llama_family, "float32"))
    code, out, err = cli(capsys, "merge", recipe, tmp_path / "out", "--log-format", "json", "--workers", 3)
    assert code == 0, err
    result, events = parse(out, err, "merge")
    assert [e["message"] for e in events if e["event"] == "status"] == [
        "reading metadata and planning",
        "opening the inputs",
        "writing config, tokenizer and card",
    ]
    assert result["tensors"] > 0 and (tmp_path / "out" / "config.json").is_file()
