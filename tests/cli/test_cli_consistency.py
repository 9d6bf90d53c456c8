"""One CLI as a person meets it: a version, a one-line description per command, one meaning per
flag, sizes with units, bundled text names wherever texts are taken."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version

import pytest
from cli_helpers import assert_one_error_line, cli
from recipes import models_recipe

import mergesmith
from mergesmith.cli.main import build_parser
from mergesmith.errors import ConfigError
from mergesmith.io.writer import parse_size


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


COMMANDS = tuple(subparsers())  # every command the CLI has, new ones included


def options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {flag: a for a in parser._actions for flag in a.option_strings}


def test_version_is_the_installed_distributions(capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["--version"])
    assert exit_.value.code == 0
    try:
        expected = version("mergesmith")
    except PackageNotFoundError:
        expected = mergesmith.__version__
    assert capsys.readouterr().out == f"mergesmith {expected}\n"


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_a_one_line_description(command):
    """``mergesmith COMMAND --help`` (a real process, default 80 columns) shows it on one line."""
    text = subprocess.run(
        [sys.executable, "-m", "mergesmith", command, "--help"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "COLUMNS": "80"},
    ).stdout
    paragraphs = text.split("\n\n")
    description = paragraphs[1]
    assert "\n" not in description and description.endswith("."), description
    assert description == subparsers()[command].description


def test_a_flag_means_one_thing_and_states_its_default():
    parsers = subparsers()
    threads = {name: options(p)["--threads"].help for name, p in parsers.items() if "--threads" in options(p)}
    assert set(threads) == {"search", "export-gguf"}
    assert all(
        h.startswith("CPU threads per worker, for ") and "(default: the machine's cores / the number of workers" in h
        for h in threads.values()
    ), threads
    for name, p in parsers.items():
        opts = options(p)
        if "--limit" in opts:
            assert "only the first N windows per text" in opts["--limit"].help and "(default" in opts["--limit"].help
        if "--quiet" in opts:
            assert opts["--quiet"].help.startswith("no progress output"), name
        if "--seed" in opts:
            assert "(default 0)" in opts["--seed"].help, name
        if "--log-format" in opts:
            assert name in ("merge", "eval", "search", "export-gguf")
    assert all("--log-format" in options(parsers[n]) for n in ("merge", "eval", "search", "export-gguf"))


@pytest.mark.parametrize("text,expected", [("5GB", 5 * 10**9), ("500MiB", 500 * 2**20), ("1000000B", 10**6)])
def test_sizes_with_units_parse(text, expected):
    assert parse_size(text) == expected


def test_a_bare_number_is_refused_with_the_unit_to_add():
    with pytest.raises(ConfigError, match=r"'5' \(--shard-size\) has no unit.*5GB, 5MB, or 5B"):
        parse_size("5")


def test_merge_refuses_a_shard_size_without_unit_before_reading_anything(llama_family, tmp_path, capsys):
    recipe = tmp_path / "r.yml"
    recipe.write_text(models_recipe("linear", llama_family, "float32"))
    assert_one_error_line(*cli(capsys, "merge", recipe, tmp_path / "out", "--shard-size", "5"), "has no unit", "5GB")
    assert not (tmp_path / "out").exists()
    # a size below the largest tensor is fine: one tensor per shard
    code, _, err = cli(capsys, "merge", recipe, tmp_path / "out", "--shard-size", "1000B", "--quiet")
    assert code == 0, err
    assert len(list((tmp_path / "out").glob("model-*.safetensors"))) > 1


def test_eval_text_takes_bundled_names_and_lists_them(llama_family, capsys):
    code, out, err = cli(
        capsys, "eval", llama_family[0], "--text", "kjv_heldout", "--context", 32, "--limit", 1, "--quiet"
    )
    assert code == 0, err
    assert "text kjv_heldout: perplexity" in out
    assert_one_error_line(
        *cli(capsys, "eval", llama_family[0], "--text", "kjv_heldot", "--quiet"),
        "kjv_heldot not found",
        "bundled text name",
        "kjv_heldout",
    )
