"""Routers from a child process (moe/router_proc.py): the same bytes as the in-process thread,
the child's errors and warnings as the parent's, the parent's own pass when the child dies, and
nothing left behind."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from cli_helpers import assert_one_error_line, leftovers
from moe_configs import moe_config, write_config

from mergesmith.moe import router_proc
from mergesmith.moe.build import build_moe


def _shards(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.safetensors"))}


def _scratch() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("mergesmith-routers-*")}


@pytest.mark.parametrize("mode", ["hidden", "cheap_embed", "hidden_avg"])
def test_child_routers_are_the_threads_bytes(llama_family, tmp_path, monkeypatch, mode):
    base, ft1, ft2 = llama_family
    config = write_config(tmp_path, moe_config(base, [ft1, ft2], gate_mode=mode, dtype="bfloat16"))
    before = _scratch()
    build_moe(config, tmp_path / "thread", router_child=False)
    started = []
    real = router_proc.RouterProcess.__init__
    monkeypatch.setattr(router_proc.RouterProcess, "__init__", lambda *a: started.append(1) or real(*a))
    build_moe(config, tmp_path / "child", router_child=True)
    assert started == [1]
    assert _shards(tmp_path / "child") == _shards(tmp_path / "thread")  # every byte, routers included
    assert _scratch() == before


def test_not_for_random_gates_adapters_or_another_tokenizer(llama_family, tmp_path):
    from moe_configs import make_adapter

    from mergesmith.moe.config import read_moe

    base, ft1, ft2 = llama_family
    adapter, _ = make_adapter(tmp_path)
    cases = {
        "random": (moe_config(base, [ft1, ft2], gate_mode="random"), False),
        "tokenizer": (moe_config(base, [ft1, ft2], tokenizer_source=str(ft1)), False),
        "adapter base": (moe_config(f"{base}+{adapter}", [ft1, ft2]), False),
        "hub id": (moe_config("someone/some-model", [ft1, ft2]), False),
        "plain": (moe_config(base, [ft1, ft2]), True),
    }
    for name, (config, expected) in cases.items():
        src = read_moe(write_config(tmp_path, config, name=f"{name.replace(' ', '_')}.yml"))
        assert router_proc.eligible(src, True) == expected, name
    plain = read_moe(tmp_path / "plain.yml")
    assert not router_proc.eligible(plain, False)
    assert not router_proc.eligible(plain)  # this process imported torch: a thread is as quick


def test_child_errors_are_the_parents_one_line(llama_family, tmp_path):
    """A base whose config has fewer vocabulary rows than the tokenizer's ids: the child's error
    reaches the user of a real CLI run (a fresh process: the child is used) as one line, exit 2,
    and nothing is left (output, staging, scratch)."""
    base, ft1, ft2 = llama_family
    small = tmp_path / "small"
    shutil.copytree(base, small)
    config = json.loads((small / "config.json").read_text())
    (small / "config.json").write_text(json.dumps({**config, "vocab_size": 40}))
    before = _scratch()
    config_path = write_config(tmp_path, moe_config(small, [ft1, ft2]))
    command = [sys.executable, "-m", "mergesmith", "moe", str(config_path), str(tmp_path / "out"), "--quiet"]
    done = subprocess.run(command, capture_output=True, text=True)
    assert_one_error_line(done.returncode, done.stdout, done.stderr, "token id", "vocab_size")
    assert not (tmp_path / "out").exists() and leftovers(tmp_path / "out") == []
    assert _scratch() == before


def test_a_child_that_dies_leaves_the_routers_to_the_parent(llama_family, tmp_path, monkeypatch):
    base, ft1, ft2 = llama_family
    config = write_config(tmp_path, moe_config(base, [ft1, ft2]))
    build_moe(config, tmp_path / "thread", router_child=False)
    monkeypatch.setattr(router_proc, "CHILD", (sys.executable, "-c", "import sys; sys.exit(3)"))  # dies at once
    build_moe(config, tmp_path / "fallback", router_child=True)
    assert _shards(tmp_path / "fallback") == _shards(tmp_path / "thread")
