"""Crashes and interrupts: nothing incomplete ever carries a final name, and what a killed run
leaves (hidden ``.NAME.partial-PID`` / ``.NAME.old-PID`` siblings, as it must) is removed by the next
run in that folder with one warning line each; a live run's staging is refused. Ctrl-C
(KeyboardInterrupt) removes the staging on its way out.

Kills are real where the timing can be made exact: the command runs in a child process whose
library function stalls at a known point (after it wrote its staging), and is SIGKILLed there.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import assert_one_error_line, cli

from mergesmith.cli.main import main
from mergesmith.errors import MergesmithError
from mergesmith.gguf import export as gguf_export

STALL = """\
import sys, time
import {module} as target
real = target.{function}
def stalled(*args, **kwargs):
    result = real(*args, **kwargs)
    print("stalled", flush=True)
    time.sleep(300)
    return result
target.{function} = stalled
from mergesmith.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def kill_when_stalled(module: str, function: str, *argv) -> int:
    """Run the CLI in a child whose ``module.function`` stalls after it returns; SIGKILL it there."""
    code = STALL.format(module=module, function=function)
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *map(str, argv)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        assert proc.stdout.readline() == "stalled\n", "the child ended before the point to kill it at"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    return proc.pid


def dead_pid() -> int:
    """The id of a process that has ended."""
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    return int(done.stdout)


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def removal_warnings(stderr: str, *paths: Path) -> None:
    """One warning line per stale sibling, naming it; nothing on stderr but warnings."""
    assert all(line.startswith("warning: ") for line in stderr.splitlines()), stderr
    lines = [line for line in stderr.splitlines() if line.startswith("warning: removed ")]
    assert len(lines) == len(paths), stderr
    for path in paths:
        assert any(
            line.startswith("warning: removed ") and str(path) in line and "is gone" in line for line in lines
        ), (path, stderr)


# --- export-gguf -------------------------------------------------------------------------------


def test_export_bad_inputs_are_one_line_and_write_nothing(capsys, tmp_path, llama_family):
    base = llama_family[0]
    as_file = tmp_path / "a-file"
    as_file.write_text("keep")
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((base / "config.json").read_text())
    gptj = tmp_path / "gptj"  # a class llama.cpp's converter does not know
    gptj.mkdir()
    config = json.loads((base / "config.json").read_text())
    (gptj / "config.json").write_text(json.dumps({**config, "architectures": ["GPTJForCausalLM"]}))
    out = tmp_path / "out"
    cases = [
        ((base, as_file, "--quant", "f16"), [f"{as_file} exists and is not a folder"]),
        ((gptj, out, "--quant", "f16"), ["GPTJForCausalLM cannot be exported to GGUF", "supported architectures"]),
        ((no_weights, out, "--quant", "q8_0"), [f"model directory {no_weights} has no .safetensors", "complete"]),
        ((tmp_path / "nope", out), ["model directory", "nope", "not found"]),
        ((base, out, "--quant", "q9_z"), ["unknown quant type 'q9_z'", "choose from"]),
    ]
    for argv, fragments in cases:
        assert_one_error_line(*cli(capsys, "export-gguf", *argv, "--quiet", "--no-card"), *fragments)
        assert not out.exists() and as_file.read_text() == "keep"


def test_export_killed_midway_leaves_only_hidden_staging_and_the_next_run_clears_it(capsys, tmp_path, llama_family):
    base, out = llama_family[0], tmp_path / "gguf"
    pid = kill_when_stalled(
        "mergesmith.gguf.export", "_produce", "export-gguf", base, out, "--quant", "q8_0", "--quiet", "--no-card"
    )
    scratch = out / f".base-F16.gguf.partial-{pid}"  # the quantizer's F16 input, written when killed
    assert [p.name for p in out.iterdir()] == [scratch.name]
    code, stdout, stderr = cli(capsys, "export-gguf", base, out, "--quant", "q8_0", "--quiet", "--no-card")
    assert code == 0, stderr
    removal_warnings(stderr, scratch)
    assert sorted(p.name for p in out.iterdir()) == ["base-Q8_0.gguf"]


def test_export_refuses_to_write_beside_a_live_export(capsys, tmp_path, llama_family):
    out = tmp_path / "gguf"
    out.mkdir()
    live = out / f".base-Q8_0.gguf.partial-{os.getppid()}"  # pytest's parent: alive
    live.write_bytes(b"GGUF")
    assert_one_error_line(
        *cli(capsys, "export-gguf", llama_family[0], out, "--quant", "q8_0", "--quiet", "--no-card"),
        f"{out / 'base-Q8_0.gguf'} is being written by another process",
        f"pid {os.getppid()}",
    )
    assert hidden(out) == [live.name] and live.read_bytes() == b"GGUF"


@pytest.mark.parametrize("error", [MergesmithError("quantizer failed"), KeyboardInterrupt()])
def test_export_failing_after_the_first_file_takes_back_what_it_wrote(monkeypatch, tmp_path, llama_family, error):
    out = tmp_path / "gguf"

    def failing(*args, **kwargs):
        raise error

    monkeypatch.setattr(gguf_export, "quantize_gguf", failing)
    with pytest.raises(type(error)):
        gguf_export.export_gguf(llama_family[0], out, "f16,q8_0")
    assert not out.exists()  # the F16 file is removed again, then the folder this run made


def test_export_with_force_keeps_files_it_did_not_write(monkeypatch, tmp_path, llama_family):
    out = tmp_path / "gguf"
    out.mkdir()
    (out / "base-F16.gguf").write_bytes(b"older export")
    (out / "notes.txt").write_text("mine")

    def failing(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf_export, "quantize_gguf", failing)
    with pytest.raises(KeyboardInterrupt):
        gguf_export.export_gguf(llama_family[0], out, "q8_0", force=True)
    assert sorted(p.name for p in out.iterdir()) == ["base-F16.gguf", "notes.txt"]
    assert (out / "base-F16.gguf").read_bytes() == b"older export"


# --- lineages --------------------------------------------------------------------------------


def lineage_file(tmp_path: Path, family) -> Path:
    base, ft1, ft2 = map(str, family)
    stage = (
        "merge_method: linear\nmodels:\n  - model: {a}\n    parameters: {{weight: 0.5}}\n"
        "  - model: {b}\n    parameters: {{weight: 0.5}}\n"
    )
    path = tmp_path / "lineage.yml"
    path.write_text(f"name: A\n{stage.format(a=base, b=ft1)}---\n{stage.format(a='A', b=ft2)}")
    return path


def test_lineage_killed_in_a_stage_is_cleared_and_rebuilt(capsys, tmp_path, llama_family):
    lineage, out = lineage_file(tmp_path, llama_family), tmp_path / "F"
    pid = kill_when_stalled("mergesmith.api", "_write_metadata", "merge", lineage, out, "--quiet")
    stages = tmp_path / "F.stages"
    staging = stages / f".A.partial-{pid}"
    assert [p.name for p in stages.iterdir()] == [staging.name] and (staging / "config.json").is_file()
    assert not out.exists()
    code, _, stderr = cli(capsys, "merge", lineage, out, "--quiet")
    assert code == 0, stderr
    removal_warnings(stderr, staging)
    assert [p.name for p in stages.iterdir()] == ["A"] and (out / "config.json").is_file()
    assert hidden(tmp_path) == []


def test_lineage_interrupted_in_the_final_stage_keeps_stage_a_and_leaves_no_staging(
    monkeypatch, tmp_path, llama_family
):
    from mergesmith import api
    from mergesmith.lineage import merge_lineage, read_lineage

    lineage, out = lineage_file(tmp_path, llama_family), tmp_path / "F"
    real, calls = api._write_metadata, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(api, "_write_metadata", interrupted)
    with pytest.raises(KeyboardInterrupt):
        merge_lineage(read_lineage(lineage), out)
    assert not out.exists() and hidden(tmp_path) == []
    assert [p.name for p in (tmp_path / "F.stages").iterdir()] == ["A"]  # complete, kept for the resume


# --- search ----------------------------------------------------------------------------------


def test_search_clears_a_killed_runs_leftovers_and_releases_its_lock_on_ctrl_c(capsys, tmp_path, llama_family):
    import yaml

    from mergesmith.search import search

    base, ft1, ft2 = map(str, llama_family)
    space = tmp_path / "space.yml"
    space.write_text(
        yaml.safe_dump(
            {
                "recipe": {"merge_method": "linear", "models": [{"model": base}, {"model": ft1}, {"model": ft2}]},
                "optimizer": "random",
                "fitness": {"terms": [{"nll": ["kjv_fitness"]}], "context": 32, "limit": 1},
                "report": {"texts": ["kjv_heldout"], "limit": 1, "top": 1},
            }
        )
    )
    out = tmp_path / "out"

    def interrupt(record, scored):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        search(space, out, budget=3, threads=1, on_result=interrupt)
    assert sorted(p.name for p in out.iterdir()) == ["search.sqlite"]  # the first candidate, kept for --resume

    gone = dead_pid()
    stale = [tmp_path / f".out.old-{gone}", out / f".winner.partial-{gone}", out / f".fitness.png.partial-{gone}"]
    for path in stale[:2]:
        path.mkdir()
        (path / "config.json").write_text("{}")
    stale[2].write_bytes(b"\x89PNG")
    code, _, stderr = cli(capsys, "search", space, out, "--budget", 3, "--resume", "--quiet")
    assert code == 0, stderr  # the interrupted search released its lock on search.sqlite
    removal_warnings(stderr, *stale)
    assert sorted(p.name for p in out.iterdir()) == ["fitness.png", "search.sqlite", "winner"]
    assert hidden(tmp_path) == []


# --- LoRA cache, eval --json, card ---------------------------------------------------------------


def test_lora_cache_staging_of_a_killed_run_is_cleared(tmp_path, llama_family):
    pytest.importorskip("peft")
    from mergesmith.api import merge

    adapter = _make_adapter(tmp_path)
    recipe = f"merge_method: linear\nmodels:\n  - model: {llama_family[0]}+{adapter}\n    parameters: {{weight: 1.0}}\n"
    cache = tmp_path / "cache"
    merge(recipe, tmp_path / "one", lora_cache=cache)
    (entry,) = cache.iterdir()
    entry.rename(cache / f".{entry.name}.partial-{dead_pid()}")  # as a run killed before its rename
    with pytest.warns(UserWarning, match=r"removed .*\.partial-\d+, left behind by an interrupted run"):
        merge(recipe, tmp_path / "two", lora_cache=cache)
    assert [p.name for p in cache.iterdir()] == [entry.name]


def _make_adapter(tmp_path: Path) -> Path:
    import warnings

    import peft
    import torch
    from pico import build_model

    model = peft.get_peft_model(
        build_model("llama", seed=0), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"])
    )
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.fill_(0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save_pretrained(tmp_path / "adapter")
    return tmp_path / "adapter"


def test_eval_json_and_card_clear_stale_partials_and_leave_none_on_ctrl_c(capsys, monkeypatch, tmp_path, llama_family):
    from mergesmith.io import staging

    text = tmp_path / "t.txt"
    text.write_text("The quick brown fox jumps over the lazy dog.\n")
    out = tmp_path / "r.json"
    stale = tmp_path / f".r.json.partial-{dead_pid()}"
    stale.write_text("{")
    model = tmp_path / "model"  # the card takes only its own model's results: evaluate a copy
    shutil.copytree(llama_family[0], model)
    code, _, stderr = cli(capsys, "eval", model, "--text", text, "--json", out, "--quiet")
    assert code == 0, stderr
    removal_warnings(stderr, stale)
    assert json.loads(out.read_text())["format"] == "mergesmith-eval/1"
    (model / "README.md").write_text("# model\n")
    before = sorted(p.name for p in model.iterdir())

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(staging.os, "replace", interrupted)
    try:  # the CLI turns Ctrl-C into exit 130 (cli/main.py); the library lets it through
        code = main(["card", str(model), "--eval", str(out)])
    except KeyboardInterrupt:
        code = 130
    assert code == 130
    assert sorted(p.name for p in model.iterdir()) == before and (model / "README.md").read_text() == "# model\n"
