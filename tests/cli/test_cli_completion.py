"""``mergesmith completion bash|zsh``: scripts generated from the parser, loaded by a real bash."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from mergesmith.cli.completion import bash_script, describe, zsh_script
from mergesmith.cli.main import build_parser, main

BASH = shutil.which("bash")


def complete(script: str, *words: str) -> list[str]:
    """What bash offers for the last of ``words`` (``mergesmith`` first), through the loaded function."""
    array = " ".join(f"'{w}'" for w in words)
    program = (
        f"{script}\ncomplete -p mergesmith\nCOMP_WORDS=({array}); COMP_CWORD={len(words) - 1}\n"
        "_mergesmith; printf '%s\\n' \"${COMPREPLY[@]}\""
    )
    done = subprocess.run([BASH, "--norc", "--noprofile", "-c", program], capture_output=True, text=True, check=True)
    first, *offered = done.stdout.splitlines()
    assert first == "complete -o default -F _mergesmith mergesmith"
    return [w for w in offered if w]


@pytest.fixture(scope="module")
def bash_completion(tmp_path_factory) -> str:
    return bash_script(build_parser())


def test_the_command_prints_the_script(capsys):
    assert main(["completion", "bash"]) == 0
    assert capsys.readouterr().out == bash_script(build_parser())
    assert main(["completion", "zsh"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("#compdef mergesmith\n") and out == zsh_script(build_parser())


@pytest.mark.skipif(BASH is None, reason="no bash on this machine")
def test_bash_completes_commands_options_and_choices(bash_completion):
    _, commands = describe(build_parser())
    assert complete(bash_completion, "mergesmith", "") == [c.name for c in commands] + ["-h", "--help", "--version"]
    assert complete(bash_completion, "mergesmith", "ex") == ["export-gguf", "extract-lora"]
    assert complete(bash_completion, "mergesmith", "exp") == ["export-gguf"]
    assert complete(bash_completion, "mergesmith", "search", "space.yml", "--re") == ["--resume", "--report"]
    assert complete(bash_completion, "mergesmith", "eval", "m/", "--log-format", "") == ["text", "json"]
    assert complete(bash_completion, "mergesmith", "export-gguf", "--eval-ref", "") == ["f16", "hf"]
    assert complete(bash_completion, "mergesmith", "completion", "") == ["bash", "zsh"]
    assert complete(bash_completion, "mergesmith", "merge", "--shard-size", "") == []  # a value: bash's default


@pytest.mark.skipif(BASH is None, reason="no bash on this machine")
def test_every_option_of_every_command_is_offered(bash_completion):
    parser = build_parser()
    _, commands = describe(parser)
    for command in commands:
        offered = complete(bash_completion, "mergesmith", command.name, "-")
        assert offered == [f for o in command.options for f in o.flags], command.name
        assert "--help" in offered


@pytest.mark.skipif(shutil.which("zsh") is None, reason="no zsh on this machine")
def test_zsh_script_parses(tmp_path):
    path = tmp_path / "_mergesmith"
    path.write_text(zsh_script(build_parser()))
    subprocess.run(["zsh", "-n", str(path)], check=True)
