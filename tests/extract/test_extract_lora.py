"""mergesmith.extract.extract_lora on pico models: the numbers, the routes, the adapter files, and
what it refuses. The fold is tests/extract/extract_fixtures.py's, written from PEFT's rules."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from extract_fixtures import add_tensor, reference_fold, relative, same, variant
from safetensors.torch import load_file

from mergesmith.errors import (
    ConfigError,
    InputFormatError,
    MissingTensorError,
    OutputExistsError,
    ShapeMismatchError,
    UnsafeOutputError,
)
from mergesmith.extract import UndecomposableError, extract_lora

NORMS = ("input_layernorm", "post_attention_layernorm", "model.norm")


def tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path / "model.safetensors")


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for file in sorted(folder.rglob("*")):
        if file.is_file():
            h.update(file.name.encode() + file.read_bytes())
    return h.hexdigest()


def test_full_rank_fold_reproduces_the_fine_tune(llama_family, tmp_path):
    """Noise deltas are full rank: at rank ≥ min(shape) B·A is Δ, and base + B·A is MODEL."""
    base, ft, _ = llama_family
    report = extract_lora(ft, base, tmp_path / "a", max_rank=128)
    folded, model = reference_fold(base, tmp_path / "a"), tensors(ft)
    assert sorted(folded) == sorted(model)
    worst = max(relative(folded[n], model[n]) for n in model)
    assert worst <= 1e-5, worst
    lora = [row for row in report.rows if row.route == "lora"]
    assert len(lora) == 4 * 7 and all(row.kept_energy > 1 - 1e-5 and row.rel_error < 1e-5 for row in lora)


def test_a_known_rank_4_delta_comes_back_at_rank_4(llama_family, llama_low_rank, tmp_path):
    """max_rank 4 on 64-wide matrices takes the randomized path (14 columns ≤ 16); the delta is
    rank 4, so the truncation is exact up to float32 rounding."""
    base = llama_family[0]
    report = extract_lora(llama_low_rank, base, tmp_path / "a", max_rank=4)
    assert set(report.ranks.values()) == {4}
    folded, model = reference_fold(base, tmp_path / "a"), tensors(llama_low_rank)
    for name in model:
        assert relative(folded[name], model[name]) < 1e-6, name
    assert all(row.rel_error < 1e-5 for row in report.rows if row.route == "lora")


def test_sv_epsilon_drops_the_singular_values_below_it(llama_family, llama_low_rank, tmp_path):
    """At max_rank 32 the exact SVD of a rank-4 delta has 4 real singular values and rounding noise."""
    report = extract_lora(llama_low_rank, llama_family[0], tmp_path / "a", max_rank=32, sv_epsilon=1e-4)
    assert set(report.ranks.values()) == {4}
    report = extract_lora(llama_low_rank, llama_family[0], tmp_path / "b", max_rank=32)
    assert set(report.ranks.values()) == {32}


@pytest.mark.parametrize("energy", [0.5, 0.9])
def test_auto_rank_keeps_at_least_the_energy_with_the_fewest_singular_values(llama_family, tmp_path, energy):
    base, ft, _ = llama_family
    report = extract_lora(ft, base, tmp_path / "a", max_rank="auto", energy=energy)
    model, base_t = tensors(ft), tensors(base)
    for row in (r for r in report.rows if r.route == "lora"):
        s = torch.linalg.svdvals((model[row.tensor] - base_t[row.tensor]).double())
        share = torch.cumsum(s.square(), 0) / s.square().sum()
        assert share[row.rank - 1] >= energy - 1e-6 and row.kept_energy >= energy - 1e-6, row
        assert row.rank == 1 or share[row.rank - 2] < energy, row  # one fewer would not do
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    differing = {m: r for m, r in report.ranks.items() if r != config["r"]}
    assert differing and config["rank_pattern"] == differing == config["alpha_pattern"]


def test_norms_go_to_modules_to_save_and_unchanged_tensors_are_skipped(llama_family, llama_low_rank, tmp_path):
    report = extract_lora(llama_low_rank, llama_family[0], tmp_path / "a", max_rank=4)
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    saved = config["modules_to_save"]
    assert len(saved) == 2 * 4 + 1 and all(any(n in m for n in NORMS) for m in saved)
    names = set(load_file(tmp_path / "a" / "adapter_model.safetensors"))
    assert "base_model.model.model.norm.weight" in names
    assert not any("embed_tokens" in n or "lm_head" in n for n in names)  # unchanged: not written
    unchanged = {row.tensor for row in report.rows if row.route == "unchanged"}
    assert unchanged == {"model.embed_tokens.weight", "lm_head.weight"}


def test_embeddings_are_saved_whole_or_extracted_as_lora(llama_family, tmp_path):
    base, ft, _ = llama_family
    extract_lora(ft, base, tmp_path / "whole", max_rank=8)
    whole = json.loads((tmp_path / "whole" / "adapter_config.json").read_text())
    assert {"model.embed_tokens", "lm_head"} <= set(whole["modules_to_save"])
    extract_lora(ft, base, tmp_path / "lora", max_rank=8, embed_lora=True)
    lora = load_file(tmp_path / "lora" / "adapter_model.safetensors")
    assert lora["base_model.model.model.embed_tokens.lora_embedding_A"].shape == (8, 300)  # (r, vocab)
    assert lora["base_model.model.model.embed_tokens.lora_embedding_B"].shape == (64, 8)  # (dim, r)
    assert lora["base_model.model.lm_head.lora_A.weight"].shape == (8, 64)
    config = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert {"model.embed_tokens", "lm_head"} <= set(config["target_modules"])


def test_adapter_files_and_card(llama_family, tmp_path):
    base, ft, _ = llama_family
    report = extract_lora(ft, base, tmp_path / "a", max_rank=8)
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "base"  # the directory's name, not /tmp/...
    assert (config["peft_type"], config["task_type"], config["r"], config["lora_alpha"]) == ("LORA", "CAUSAL_LM", 8, 8)
    assert report.adapter_bytes == (tmp_path / "a" / "adapter_model.safetensors").stat().st_size
    card = (tmp_path / "a" / "README.md").read_text()
    assert "| model.layers.0.self_attn.q_proj.weight | 64×64 | lora | 8 |" in card and report.summary() in card
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]  # no staging left beside it


def test_undecomposable_tensor_is_an_error_naming_it_unless_skipped(llama_family, tmp_path):
    extra = "model.layers.0.mlp.experts"
    base, ft = variant(llama_family[0], tmp_path / "base", same), variant(llama_family[1], tmp_path / "ft", same)
    add_tensor(base, f"{extra}.weight", torch.zeros(2, 3, 4))
    add_tensor(ft, f"{extra}.weight", torch.ones(2, 3, 4))
    with pytest.raises(
        UndecomposableError, match=rf"tensor {extra}.weight \[2, 3, 4\] changed .*--save-module {extra}"
    ):
        extract_lora(ft, base, tmp_path / "a", max_rank=4)
    assert not (tmp_path / "a").exists()
    report = extract_lora(ft, base, tmp_path / "a", max_rank=4, skip_undecomposable=True)
    assert [r.route for r in report.rows if r.tensor == f"{extra}.weight"] == ["skipped (undecomposable)"]
    report = extract_lora(ft, base, tmp_path / "b", max_rank=4, save_modules=[extra])
    assert f"base_model.model.{extra}.weight" in load_file(tmp_path / "b" / "adapter_model.safetensors")


def test_shapes_and_names_that_differ_are_one_line_errors(llama_family, qwen2_family, tmp_path):
    grow = lambda name, t: torch.cat([t, t[:1]]) if "embed_tokens" in name else t  # noqa: E731  a token added
    resized = variant(llama_family[1], tmp_path / "resized", grow)
    with pytest.raises(
        ShapeMismatchError,
        match=r"^tensor model.embed_tokens.weight is \[301, 64\] in MODEL .* but "
        r"\[300, 64\] in BASE .*; a LoRA adapter cannot change a shape",
    ):
        extract_lora(resized, llama_family[0], tmp_path / "a", max_rank=4)
    with pytest.raises(
        MissingTensorError, match=r"tensor model.layers.0.self_attn.k_proj.bias \(12 in all\) is in MODEL"
    ):
        extract_lora(qwen2_family[1], llama_family[0], tmp_path / "a", max_rank=4)
    renamed = variant(llama_family[1], tmp_path / "renamed", same)
    add_tensor(renamed, "extra.weight", torch.zeros(3))
    with pytest.raises(MissingTensorError, match=r"tensor extra.weight \(1 in all\) is in MODEL .* but not in BASE"):
        extract_lora(renamed, llama_family[0], tmp_path / "a", max_rank=4)
    assert not (tmp_path / "a").exists()


def test_output_is_atomic_and_never_an_input(llama_family, tmp_path):
    base, ft, _ = llama_family
    before = digest(ft) + digest(base)
    with pytest.raises(UnsafeOutputError, match="lies inside"):
        extract_lora(ft, base, ft / "adapter", max_rank=4)
    with pytest.raises(UnsafeOutputError, match=r"output .* is BASE"):
        extract_lora(ft, base, base, max_rank=4, force=True)
    extract_lora(ft, base, tmp_path / "a", max_rank=4)
    with pytest.raises(OutputExistsError, match="already exists"):
        extract_lora(ft, base, tmp_path / "a", max_rank=4)
    extract_lora(ft, base, tmp_path / "a", max_rank=2, force=True)
    assert json.loads((tmp_path / "a" / "adapter_config.json").read_text())["r"] == 2
    with pytest.raises(InputFormatError, match="same values in every tensor"):
        extract_lora(llama_family[0], variant(base, tmp_path / "copy", same), tmp_path / "b", max_rank=4)
    assert digest(ft) + digest(base) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "copy"]


@pytest.mark.parametrize(
    "options,message",
    [
        (dict(max_rank=0), "max_rank 0 .* positive integer or 'auto'"),
        (dict(max_rank="auto", energy=1.5), r"energy 1.5 \(--energy\) .* \(0, 1\]"),
        (dict(max_rank=4, include_regex="("), r"include_regex \(--include-regex\) '\(' is not a regular expression"),
        (dict(max_rank=4, save_modules=["lm_haed"]), "save_modules 'lm_haed' .* names no module"),
        (dict(max_rank=4, device="tpu"), "device 'tpu'"),
    ],
)
def test_bad_options_are_config_errors(llama_family, tmp_path, options, message):
    with pytest.raises(ConfigError, match=message):
        extract_lora(llama_family[1], llama_family[0], tmp_path / "a", **options)
    assert not (tmp_path / "a").exists()


def test_include_and_exclude_regexes_pick_modules(llama_family, llama_low_rank, tmp_path):
    report = extract_lora(
        llama_low_rank, llama_family[0], tmp_path / "a", max_rank=4, include_regex=r"self_attn", exclude_regex=r"k_proj"
    )
    assert sorted({m.rsplit(".", 1)[1] for m in report.ranks}) == ["o_proj", "q_proj", "v_proj"]
    excluded = {r.tensor for r in report.rows if r.route == "excluded"}
    assert "model.layers.0.mlp.up_proj.weight" in excluded and "model.norm.weight" in excluded


def test_a_failure_while_writing_leaves_nothing_behind(llama_family, tmp_path, monkeypatch):
    import errno

    from mergesmith.errors import OutputWriteError
    from mergesmith.extract import adapter

    calls = []

    def full_disk(self, name, tensor):
        calls.append(name)
        if len(calls) > 5:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.path))
        return original(self, name, tensor)

    original = adapter.AdapterFile.add
    monkeypatch.setattr(adapter.AdapterFile, "add", full_disk)
    with pytest.raises(OutputWriteError, match=r"cannot write .*/out/a: No space left on device; .*removed"):
        extract_lora(llama_family[1], llama_family[0], tmp_path / "out" / "a", max_rank=4)
    assert not (tmp_path / "out").exists()  # the folder made for OUT goes too


def test_the_base_is_named_by_hub_id_or_directory_name(tmp_path):
    from mergesmith.extract.api import display_name

    (tmp_path / "org").mkdir()
    assert display_name("HuggingFaceTB/SmolLM2-135M@main") == "HuggingFaceTB/SmolLM2-135M@main"
    assert display_name(str(tmp_path / "org")) == "org"
    assert display_name(f"{tmp_path / 'org'}+some-org/adapter") == "org+some-org/adapter"
