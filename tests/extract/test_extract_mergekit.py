"""Differential: ``extract_lora`` against mergekit 0.1.5's ``mergekit-extract-lora`` on pico models.

Factors are compared as products: an SVD is unique only up to the signs (and, for equal singular
values, rotations) of its vectors, so B·A is what both must agree on. Both take the SVD of the same
float32 Δ, whose backward error is about n·ε·‖Δ‖ (64 · 6e-8 ≈ 4e-6): hence 1e-5 on products,
relative to ‖Δ‖. Measured: full-rank noise at rank 8, where both call the exact LAPACK SVD and split
√Σ alike, gives identical products; the rank-4 delta at rank 4, where ours is randomized (and the
truncation unique: σ_5 is rounding noise), differs by 9e-7. Where mergekit differs by design of
this tool (biases, tied heads, norms under --skip-undecomposable, the base's name), the tests say
so and check that ours keeps what mergekit loses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from extract_fixtures import reference_fold, relative
from reference import load_dir
from safetensors.torch import load_file

from mergesmith.extract import extract_lora

pytestmark = pytest.mark.mergekit
PRODUCT_TOLERANCE = 1e-5
SCRIPT = Path(sys.executable).with_name("mergekit-extract-lora")


def mergekit_extract(model: Path, base: Path, out: Path, rank: int, *extra: str) -> Path:
    cmd = [
        str(SCRIPT),
        "--model",
        str(model),
        "--base-model",
        str(base),
        "--out-path",
        str(out),
        "--max-rank",
        str(rank),
        "--no-cuda",
        "--quiet",
        *extra,
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def products(adapter: Path) -> dict[str, torch.Tensor]:
    """Module -> scale·B·A (alpha = r in both tools' adapters, so scale 1)."""
    tensors = load_file(adapter / "adapter_model.safetensors")
    out = {}
    for name, a in tensors.items():
        if name.endswith(".lora_A.weight"):
            b = tensors[name.replace("lora_A", "lora_B")]
            out[name.removeprefix("base_model.model.").removesuffix(".lora_A.weight")] = b.double() @ a.double()
    return out


@pytest.mark.parametrize("which,rank", [("low-rank", 4), ("noise", 8)])
def test_products_and_folds_equal_mergekits(llama_family, llama_low_rank, tmp_path, which, rank):
    """A rank-4 delta at rank 4 (ours: randomized SVD; mergekit: exact), and full-rank noise
    truncated to rank 8 (both exact)."""
    base = llama_family[0]
    ft = llama_low_rank if which == "low-rank" else llama_family[1]
    extract_lora(ft, base, tmp_path / "ours", max_rank=rank)
    theirs = mergekit_extract(ft, base, tmp_path / "mergekit", rank)
    ours_p, theirs_p = products(tmp_path / "ours"), products(theirs)
    assert set(ours_p) <= set(theirs_p)  # mergekit also writes rank-r factors of unchanged matrices
    model, base_t = load_dir(ft), load_dir(base)
    for module, product in ours_p.items():
        delta = (model[module + ".weight"] - base_t[module + ".weight"]).double()
        assert float((product - theirs_p[module]).norm() / delta.norm()) < PRODUCT_TOLERANCE, module
    ours_fold, theirs_fold = reference_fold(base, tmp_path / "ours"), reference_fold(base, theirs)
    for name in model:
        assert relative(ours_fold[name], theirs_fold[name]) < PRODUCT_TOLERANCE, name


def test_mergekit_loses_qwen2_bias_deltas_and_ours_keeps_them(qwen2_family, tmp_path):
    """mergekit writes lora_B.bias but no lora_bias flag, so PEFT (and any fold) ignores them."""
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    base, ft, _ = qwen2_family
    extract_lora(ft, base, tmp_path / "ours", max_rank=8)
    theirs = mergekit_extract(ft, base, tmp_path / "mergekit", 8)
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_B.bias" in load_file(
        theirs / "adapter_model.safetensors"
    )
    assert not json.loads((theirs / "adapter_config.json").read_text()).get("lora_bias")
    model, base_t = load_dir(ft), load_dir(base)
    for adapter, keeps in ((tmp_path / "ours", True), (theirs, False)):
        loaded = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        merged = peft.PeftModel.from_pretrained(loaded, adapter).merge_and_unload()
        folded = merged.state_dict()
        for name in (n for n in model if n.endswith(".bias")):
            assert torch.equal(folded[name], model[name] if keeps else base_t[name]), (adapter.name, name)
        # Both heads hold the new embedding, but PEFT unties mergekit's on merge (a saved merge would
        # store the matrix twice); ours stay tied (ensure_weight_tying).
        assert torch.equal(folded["lm_head.weight"], model["model.embed_tokens.weight"])
        assert (merged.lm_head.weight is merged.model.embed_tokens.weight) == keeps, adapter.name
        assert merged.config.tie_word_embeddings == keeps, adapter.name


def test_mergekit_drops_norms_under_skip_undecomposable_and_ours_keeps_them(llama_family, tmp_path):
    base, ft, _ = llama_family
    extract_lora(ft, base, tmp_path / "ours", max_rank=8, skip_undecomposable=True)
    theirs = mergekit_extract(ft, base, tmp_path / "mergekit", 8, "--skip-undecomposable")
    model, base_t = load_dir(ft), load_dir(base)
    norms = [n for n in model if "norm" in n]
    ours_fold, theirs_fold = reference_fold(base, tmp_path / "ours"), reference_fold(base, theirs)
    assert all(torch.equal(ours_fold[n].float(), model[n]) for n in norms)
    assert all(torch.equal(theirs_fold[n].float(), base_t[n]) for n in norms)  # the fine-tune's norms are gone
    # and the base is named by the directory, not by this machine's absolute path
    assert json.loads((theirs / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base)
    assert json.loads((tmp_path / "ours" / "adapter_config.json").read_text())["base_model_name_or_path"] == "base"
