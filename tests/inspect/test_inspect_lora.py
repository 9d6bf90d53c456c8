"""``base+adapter`` inputs: a rank-r LoRA delta keeps all its energy in r singular directions, tensors
the adapter does not touch have a zero delta, and the numbers match PEFT's merge_and_unload()."""

from __future__ import annotations

import math

import pytest
import torch
from pico import build_model, save_model
from safetensors.torch import load_file

from mergesmith.inspect import inspect_models

peft = pytest.importorskip("peft")
RANK = 2


def adapter(path, seed: int):
    """A rank-2 adapter on q_proj and v_proj of the seed-0 pico llama; returns PEFT's merged model."""
    model = peft.get_peft_model(
        build_model("llama", seed=0), peft.LoraConfig(r=RANK, lora_alpha=4, target_modules=["q_proj", "v_proj"])
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # PEFT zeroes B: a fresh adapter would change nothing
        for name, param in sorted(model.named_parameters()):
            if "lora_B" in name:
                param.add_(0.1 * torch.randn(param.shape, generator=generator))
    model.save_pretrained(path)
    return model.merge_and_unload()


def test_lora_deltas(llama_family, tmp_path):
    base = llama_family[0]  # seed 0: the model the adapters are made on
    refs, merged = [], []
    for seed in (1, 2):
        folded = adapter(tmp_path / f"a{seed}", seed)
        merged.append(load_file(str(save_model(folded, tmp_path / f"m{seed}") / "model.safetensors")))
        refs.append(f"{base}+{tmp_path / f'a{seed}'}")
    result = inspect_models(refs, base=str(base), top_k=RANK)
    base_tensors = load_file(str(base / "model.safetensors"))
    for row in result.rows:
        if "q_proj" in row.name or "v_proj" in row.name:
            assert row.topk_energy == pytest.approx((1.0, 1.0), abs=1e-5)
            d1, d2 = (m[row.name].double() - base_tensors[row.name].double() for m in merged)
            want = float(d1.flatten() @ d2.flatten() / (d1.norm() * d2.norm()))
            assert math.isclose(row.cosine[0][1], want, abs_tol=1e-5)
        else:
            assert row.delta_norm == (0.0, 0.0) and row.cosine[0][1] is None and row.topk_energy == (None, None)
