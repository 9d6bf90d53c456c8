"""``mergesmith extract-lora`` through its own parser and handler (mergesmith/cli/extract_cmd.py),
without mergesmith.cli.main: the subcommand is built on a fresh ArgumentParser."""

from __future__ import annotations

import argparse
import json

import pytest

from mergesmith.cli import extract_cmd
from mergesmith.cli.events import Log
from mergesmith.errors import ConfigError, UnsafeOutputError


def parse(*argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mergesmith")
    extract_cmd.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["extract-lora", *map(str, argv)])


def test_writes_the_adapter_and_prints_the_table(llama_family, tmp_path, capsys):
    base, ft, _ = llama_family
    args = parse(
        ft,
        base,
        tmp_path / "a",
        "--max-rank",
        "8",
        "--save-module",
        "lm_head",
        "-i",
        "layers",
        "-i",
        "lm_head",
        "-e",
        "k_proj",
    )
    assert args.handler(args) == 0
    out = capsys.readouterr().out
    assert "| model.layers.0.self_attn.q_proj.weight | 64×64 | lora | 8 |" in out
    assert "| model.layers.0.self_attn.k_proj.weight | 32×64 | excluded |" in out
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert "lm_head" in config["modules_to_save"] and "model.embed_tokens" not in config["modules_to_save"]
    assert not any("k_proj" in m for m in config["target_modules"])


def test_quiet_prints_nothing_and_auto_takes_an_energy(llama_family, tmp_path, capsys):
    base, ft, _ = llama_family
    args = parse(ft, base, tmp_path / "a", "--max-rank", "auto", "--energy", "0.5", "--quiet")
    assert (args.max_rank, args.energy) == ("auto", 0.5)
    assert args.handler(args) == 0
    assert capsys.readouterr() == ("", "")
    assert json.loads((tmp_path / "a" / "adapter_config.json").read_text())["rank_pattern"]


def test_json_result_through_the_commands_log(llama_family, tmp_path, capsys):
    base, ft, _ = llama_family
    args = parse(ft, base, tmp_path / "a", "--max-rank", "4", "--quiet")
    args.log = Log("extract-lora", "json", quiet=True)
    assert args.handler(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["event"] == "result" and result["out"] == str(tmp_path / "a")
    assert set(result["ranks"].values()) == {4} and result["adapter_bytes"] > 0


@pytest.mark.parametrize("rank", ["0", "-3", "big"])
def test_a_bad_rank_is_a_usage_error(rank, capsys):
    with pytest.raises(SystemExit) as exit_:
        parse("m", "b", "o", "--max-rank", rank)
    assert exit_.value.code == 2 and "--max-rank" in capsys.readouterr().err


def test_library_errors_reach_the_caller_as_one_line(llama_family, tmp_path):
    base, ft, _ = llama_family
    args = parse(ft, base, ft / "inside", "--max-rank", "4")
    with pytest.raises(UnsafeOutputError) as error:
        args.handler(args)
    assert "\n" not in str(error.value) and "choose an output path outside every input" in str(error.value)
    args = parse(ft, base, tmp_path / "a", "--max-rank", "4", "-i", "(")
    with pytest.raises(ConfigError, match="is not a regular expression"):
        args.handler(args)
    assert not (tmp_path / "a").exists()
