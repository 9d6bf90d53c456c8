"""Bad lineages and bad LoRA adapters, end to end through ``mergesmith merge``: exit 2, one ``error:``
line naming the stage / adapter file / tensor and the fix, and nothing written (no OUT, no
OUT.stages, no staging, no LoRA cache entry); the inputs stay byte-identical.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from cli_helpers import assert_one_error_line, cli, digest
from pico import build_model
from safetensors.torch import load_file, save_file

peft = pytest.importorskip("peft")

STAGE = (
    "merge_method: linear\nmodels:\n  - model: {a}\n    parameters: {{weight: 0.5}}\n"
    "  - model: {b}\n    parameters: {{weight: 0.5}}\n"
)


@pytest.fixture(scope="module")
def adapter(tmp_path_factory) -> Path:
    """A PEFT LoRA adapter (r 4, q_proj and v_proj) of llama_family's base, with non-zero B."""
    model = peft.get_peft_model(
        build_model("llama", seed=0), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    )
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if "lora_B" in name:
                param.add_(0.1 * torch.randn(param.shape, generator=generator))
    path = tmp_path_factory.mktemp("adapter") / "adapter"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save_pretrained(path)
    return path


def merge_fails(capsys, tmp_path: Path, text: str, *fragments: str) -> None:
    """``merge`` of ``text`` fails in one line and leaves the folder as it was."""
    recipe = tmp_path / "recipe.yml"
    recipe.write_text(text)
    before = sorted(p.name for p in tmp_path.iterdir())
    out = tmp_path / "out"
    assert_one_error_line(*cli(capsys, "merge", recipe, out, "--quiet", "--lora-cache", tmp_path / "cache"), *fragments)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no out, out.stages, staging or cache


# --- lineages ----------------------------------------------------------------------------------


def test_stage_using_itself(capsys, tmp_path, llama_family):
    base, ft1, ft2 = llama_family
    text = f"name: A\n{STAGE.format(a='A', b=ft1)}---\n{STAGE.format(a='A', b=ft2)}"
    merge_fails(capsys, tmp_path, text, "stage 'A' (document 1) uses its own output", "fix that model reference")


def test_two_stages_using_each_other(capsys, tmp_path, llama_family):
    base, ft1, ft2 = llama_family
    text = f"name: A\n{STAGE.format(a='B', b=ft1)}---\nname: B\n{STAGE.format(a='A', b=ft2)}---\n{STAGE.format(a='A', b='B')}"
    merge_fails(capsys, tmp_path, text, "stages use each other in a cycle ('A' → 'B' → 'A')")


def test_stage_name_used_twice(capsys, tmp_path, llama_family):
    base, ft1, ft2 = llama_family
    text = f"name: A\n{STAGE.format(a=base, b=ft1)}---\nname: A\n{STAGE.format(a=base, b=ft2)}---\n{STAGE.format(a='A', b=ft2)}"
    merge_fails(capsys, tmp_path, text, "documents 1 and 2 are both named 'A'", "unique")


def test_reference_to_a_stage_that_does_not_exist(capsys, tmp_path, llama_family):
    base, ft1, ft2 = llama_family
    text = f"name: A\n{STAGE.format(a=base, b=ft1)}---\n{STAGE.format(a='Z', b=ft2)}"
    merge_fails(
        capsys,
        tmp_path,
        text,
        "document 2",
        "model 'Z' not found: it is neither a stage of this lineage (stages: 'A')",
        "fix the name",
    )


def test_missing_adapter_on_a_stage_fails_before_stage_one_is_built(capsys, tmp_path, llama_family):
    base, ft1, ft2 = llama_family
    text = f"name: A\n{STAGE.format(a=base, b=ft1)}---\n{STAGE.format(a='A+no-adapter', b=ft2)}"
    merge_fails(capsys, tmp_path, text, "document 2", "model 'A+no-adapter'", "adapter 'no-adapter' not found")


def test_adapter_that_does_not_fit_a_stage_fails_before_stage_one_is_built(capsys, tmp_path, llama_family, adapter):
    """Checked against the stage's planned tensors: stage A keeps layers 0-1 of the 4 the adapter adapts."""
    base = llama_family[0]
    sliced = (
        f"name: A\nmerge_method: passthrough\nslices:\n  - sources:\n      - model: {base}\n"
        "        layer_range: [0, 2]\n"
    )
    text = f"{sliced}---\n{STAGE.format(a=f'A+{adapter}', b='A')}"
    merge_fails(
        capsys,
        tmp_path,
        text,
        f"{adapter / 'adapter_model.safetensors'}",
        "targets model.layers.2.self_attn",
        "does not have",
    )


# --- LoRA adapters -----------------------------------------------------------------------------


def _edit_config(path: Path, **changes) -> None:
    file = path / "adapter_config.json"
    file.write_text(json.dumps({**json.loads(file.read_text()), **changes}))


def _break(bad: Path, case: str) -> list[str]:
    """Break the adapter copy ``bad``; the fragments the error line must hold."""
    config, weights = bad / "adapter_config.json", bad / "adapter_model.safetensors"
    if case == "no config":
        config.unlink()
        return [f"{bad} has no adapter_config.json", "PEFT LoRA adapter directory"]
    if case == "config not json":
        config.write_text("{oops")
        return [f"{config}: not valid JSON", "save_pretrained()"]
    if case == "config a list":
        config.write_text("[1]")
        return [f"{config}: holds a JSON list, not an object"]
    if case == "r not an integer":
        _edit_config(bad, r="4")
        return [f"{config}: r is '4'", "positive integer"]
    if case == "r not the rank":
        _edit_config(bad, r=8)
        return [f"{weights}", "q_proj.lora_A.weight has rank 4", "r = 8", "disagree"]
    if case == "target_modules unknown":
        _edit_config(bad, target_modules=["foo_proj", "bar_proj"])
        return [f"{config}: target_modules ['foo_proj', 'bar_proj'] name no module", "different model"]
    if case == "target_modules regex matches nothing":
        _edit_config(bad, target_modules=r".*\.zzz")
        return [f"{config}: target_modules '.*\\.zzz' matches no module", "different model"]
    if case == "no weights":
        weights.unlink()
        return [f"{bad} has no adapter_model.safetensors", "save_pretrained()"]
    tensors = load_file(weights)  # a factor whose shape does not fit the base tensor
    name = next(n for n in sorted(tensors) if "lora_A" in n)
    tensors[name] = tensors[name][:, :32].contiguous()
    save_file(tensors, weights)
    return [f"{weights}", name, "[4, 32]", "is [64, 64] in the base", "different model"]


@pytest.mark.parametrize(
    "case",
    [
        "no config",
        "config not json",
        "config a list",
        "r not an integer",
        "r not the rank",
        "target_modules unknown",
        "target_modules regex matches nothing",
        "no weights",
        "shape does not fit",
    ],
)
def test_bad_adapter_is_one_line(capsys, tmp_path, llama_family, adapter, case):
    base, ft1, _ = llama_family
    bad = shutil.copytree(adapter, tmp_path / "bad")
    fragments = _break(bad, case)
    before = digest(bad, base)
    merge_fails(capsys, tmp_path, STAGE.format(a=f"{base}+{bad}", b=ft1), *fragments)
    assert digest(bad, base) == before


def test_target_modules_partly_unknown_is_a_warning_as_in_peft(capsys, tmp_path, llama_family, adapter):
    base, ft1, _ = llama_family
    odd = shutil.copytree(adapter, tmp_path / "odd")
    _edit_config(odd, target_modules=["q_proj", "v_proj", "foo_proj"])
    recipe = tmp_path / "recipe.yml"
    recipe.write_text(STAGE.format(a=f"{base}+{odd}", b=ft1))
    code, _, stderr = cli(capsys, "merge", recipe, tmp_path / "out", "--quiet", "--lora-cache", tmp_path / "cache")
    assert code == 0, stderr
    assert stderr.startswith("warning: ") and "target_modules ['foo_proj'] match no module" in stderr
    assert len(stderr.splitlines()) == 1
