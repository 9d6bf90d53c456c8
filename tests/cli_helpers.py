"""What the CLI contract tests share: run the CLI in-process, check the one error line, check
that nothing was left behind, copy and damage pico models, fingerprint inputs."""

from __future__ import annotations

import hashlib
import shutil
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from mergesmith.cli.main import main

LINEAR_TWO = """\
merge_method: linear
models:
  - model: {a}
    parameters: {{weight: 1.0}}
  - model: {b}
    parameters: {{weight: 1.0}}
"""


def write_recipe(tmp_path: Path, text: str, name: str = "recipe.yml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def cli(capsys, *argv) -> tuple[int, str, str]:
    """Run the CLI in-process; output printed before the call (model building) is discarded."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def leftovers(out: Path) -> list[str]:
    """Staging (``.out.partial-*``) and swap (``.out.old-*``) siblings of ``out``."""
    return sorted(
        p.name for p in out.parent.iterdir() if p.name.startswith((f".{out.name}.partial", f".{out.name}.old"))
    )


def assert_one_error_line(code: int, stdout: str, stderr: str, *fragments: str) -> str:
    """Exit 2, nothing on stdout, exactly one stderr line ``error: ...`` holding every fragment."""
    assert code == 2, f"exit code {code}, stderr: {stderr!r}"
    assert stdout == ""
    lines = stderr.splitlines()
    assert len(lines) == 1 and stderr.endswith("\n"), f"want one line on stderr, got {stderr!r}"
    line = lines[0]
    assert line.startswith("error: "), line
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} missing from {line!r}"
    return line


def assert_nothing_written(out: Path) -> None:
    assert not out.exists(), f"{out} was created"
    assert leftovers(out) == [], f"stray staging directories: {leftovers(out)}"


def merge_fails(capsys, tmp_path: Path, recipe_text: str, *fragments: str, extra=()) -> str:
    """``mergesmith merge`` on the recipe must fail cleanly; returns the error line."""
    recipe = write_recipe(tmp_path, recipe_text)
    out = tmp_path / "out"
    line = assert_one_error_line(*cli(capsys, "merge", recipe, out, "--quiet", *extra), *fragments)
    assert_nothing_written(out)
    return line


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def rewrite_tensors(model_dir: Path, edit) -> None:
    """Load model.safetensors, let ``edit(tensors)`` change the dict, write it back."""
    file = model_dir / "model.safetensors"
    tensors = load_file(file)
    edit(tensors)
    save_file(tensors, file, metadata={"format": "pt"})


def output_tensors(out: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for shard in sorted(out.glob("*.safetensors")):
        tensors.update(load_file(shard))
    return tensors


def digest(*paths: Path) -> dict[str, str]:
    """sha256 of every file under ``paths``: what "inputs byte-identical" compares."""
    files = [f for p in paths for f in ([p] if p.is_file() else sorted(p.rglob("*"))) if f.is_file()]
    return {str(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def quiet_merge(text: str, out: Path) -> Path:
    """``mergesmith.api.merge`` of recipe text into ``out``, its warnings silenced; returns ``out``."""
    from mergesmith.api import merge

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        merge(text, out)
    return out
