"""Extracted adapters as their consumers read them: PEFT's ``PeftModel.from_pretrained`` +
``merge_and_unload()``, and mergesmith's own ``base+adapter`` input in a linear recipe."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from extract_fixtures import reference_fold, relative
from reference import load_dir

from mergesmith.api import merge
from mergesmith.extract import extract_lora

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

# PEFT folds in float32 and the reference in float64: a few float32 roundings of |W| ≈ 0.1.
RELATIVE = 1e-6


def peft_fold(base: Path, adapter: Path) -> dict[str, torch.Tensor]:
    model = transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        merged = peft.PeftModel.from_pretrained(model, adapter).merge_and_unload()
    missing = [
        str(w.message) for w in caught if "missing" in str(w.message).lower() or "unexpected" in str(w.message).lower()
    ]
    assert not missing, missing  # every tensor of the adapter loaded, none expected is absent
    return {name: t.detach() for name, t in merged.state_dict().items()}


def mergesmith_fold(base: Path, adapter: Path, out: Path) -> dict[str, torch.Tensor]:
    recipe = (
        f"merge_method: linear\nmodels:\n  - model: {base}+{adapter}\n    parameters: {{weight: 1}}\ndtype: float32\n"
    )
    merge(recipe, out, lora_cache=out.with_name(out.name + "-cache"))
    return load_dir(out)


def assert_folds_equal(got: dict, expected: dict, names) -> None:
    for name in names:
        assert relative(got[name], expected[name]) < RELATIVE, name


@pytest.mark.parametrize("embed_lora", [False, True])
def test_peft_loads_and_merges_llama(llama_family, tmp_path, embed_lora):
    base, ft, _ = llama_family
    extract_lora(ft, base, tmp_path / "a", max_rank=8, embed_lora=embed_lora)
    expected = reference_fold(base, tmp_path / "a")
    assert_folds_equal(peft_fold(base, tmp_path / "a"), expected, expected)


def test_qwen2_biases_travel_whole_beside_unbiased_targets(qwen2_family, tmp_path):
    """o_proj and the MLP have no bias, so PEFT could not merge lora_bias: the new q/k/v biases
    go as bias: lora_only, and PEFT's fold gives them back exactly."""
    base, ft, _ = qwen2_family
    extract_lora(ft, base, tmp_path / "a", max_rank=8)
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert (config["bias"], config["lora_bias"]) == ("lora_only", False)
    folded, model = peft_fold(base, tmp_path / "a"), load_dir(ft)
    biases = [n for n in model if n.endswith(".bias")]
    assert len(biases) == 12 and all(torch.equal(folded[n], model[n]) for n in biases)
    expected = reference_fold(base, tmp_path / "a")
    assert_folds_equal(folded, expected, expected)
    # Tied embeddings saved whole: the head goes too, with ensure_weight_tying, so that PEFT's head
    # is the new embedding matrix (without it PEFT wraps the embedding alone and the head stays the base's).
    assert config["ensure_weight_tying"] is True
    assert torch.equal(folded["lm_head.weight"], model["model.embed_tokens.weight"])


def test_qwen2_bias_deltas_as_lora_bias_when_every_target_has_a_bias(qwen2_family, qwen2_qkv, tmp_path):
    base = qwen2_family[0]
    report = extract_lora(qwen2_qkv, base, tmp_path / "a", max_rank=4)
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert config["lora_bias"] is True and config["bias"] == "none" and len(report.ranks) == 12
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_B.bias" in load_dir_adapter(tmp_path / "a")
    folded, model = peft_fold(base, tmp_path / "a"), load_dir(qwen2_qkv)
    for name in model:
        assert relative(folded[name], model[name]) < 1e-6, name


def load_dir_adapter(adapter: Path) -> set[str]:
    from safetensors import safe_open

    with safe_open(adapter / "adapter_model.safetensors", "pt") as f:
        return set(f.keys())


@pytest.mark.parametrize("family,embed_lora", [("llama", False), ("qwen2", True)])
def test_mergesmith_base_plus_adapter_folds_it_back(families_small, tmp_path, family, embed_lora):
    base, ft = families_small[family]
    extract_lora(ft, base, tmp_path / "a", max_rank=8, embed_lora=embed_lora)
    expected = reference_fold(base, tmp_path / "a")
    got = mergesmith_fold(base, tmp_path / "a", tmp_path / "merged")
    assert_folds_equal(got, expected, expected)


def test_mergesmith_folds_tied_embeddings_saved_whole(qwen2_family, tmp_path):
    base, ft, _ = qwen2_family
    extract_lora(ft, base, tmp_path / "a", max_rank=8)
    expected = reference_fold(base, tmp_path / "a")
    got = mergesmith_fold(base, tmp_path / "a", tmp_path / "merged")
    assert_folds_equal(got, expected, [n for n in expected if n != "lm_head.weight"])


def test_mergesmith_folds_lora_bias_adapters(qwen2_family, qwen2_qkv, tmp_path):
    extract_lora(qwen2_qkv, qwen2_family[0], tmp_path / "a", max_rank=4)
    got, model = mergesmith_fold(qwen2_family[0], tmp_path / "a", tmp_path / "merged"), load_dir(qwen2_qkv)
    for name in model:
        assert relative(got[name], model[name]) < 1e-6, name


@pytest.fixture(scope="module")
def families_small(llama_family, qwen2_family):
    return {"llama": llama_family[:2], "qwen2": qwen2_family[:2]}
