"""`mergesmith moe` against mergekit-moe 0.1.5 on the same configs and pico inputs.

Copied tensors are bit-identical (mergekit fuses each layer's experts into one
``experts.gate_up_proj`` / ``experts.down_proj``; mergesmith writes them one per expert under
Mixtral-8x7B's names: the fused rows are compared with the per-expert tensors), configs equal.

Routers. mergekit runs the hidden-state pass with the model loaded in bfloat16 whatever its
dtype; mergesmith in float32. bfloat16 keeps 8 significant bits (unit roundoff 2^-9 ≈ 0.002), and
the states pass through 4 pico layers, each adding its rounding to the residual stream: the
normalised router rows then differ by a few 2^-9 relative, so |Δ| ≤ 0.01 on rows of unit norm
(entries ~0.12) and cosine ≥ 0.9995 per row. That the formula is the same is shown separately
and tightly: mergekit's own get_gate_params, with the model loaded in float32, gives mergesmith's
rows to 2e-6 (float32 rounding; prompts are batched differently). cheap_embed and random modes
need no forward pass; cheap_embed rows agree to float32 rounding (1e-6).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from moe_configs import PROMPTS, moe_config, write_config
from reference import load_dir

from mergesmith.moe.build import build_moe

pytestmark = pytest.mark.mergekit
ROUTER_ATOL_BF16, ROUTER_COS_BF16 = 0.01, 0.9995


def run_mergekit_moe(config_path: Path, out: Path) -> Path:
    script = Path(sys.executable).parent / "mergekit-moe"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        [str(script), str(config_path), str(out), "--device", "cpu"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def _config(path: Path) -> dict:
    config = json.loads((path / "config.json").read_text())
    config.pop("transformers_version", None)
    return config


def _mixtral_pairs(ours: dict, theirs: dict, experts: int):
    """(name, ours, mergekit's) for every tensor, the fused expert tensors split per expert."""
    for name, tensor in theirs.items():
        prefix = name.rsplit(".mlp.", 1)[0]
        if name.endswith("mlp.experts.gate_up_proj"):
            size = tensor.shape[1] // 2
            for e in range(experts):
                moe = f"{prefix}.block_sparse_moe.experts.{e}"
                yield f"{moe}.w1.weight", ours[f"{moe}.w1.weight"], tensor[e, :size]
                yield f"{moe}.w3.weight", ours[f"{moe}.w3.weight"], tensor[e, size:]
        elif name.endswith("mlp.experts.down_proj"):
            for e in range(experts):
                moe = f"{prefix}.block_sparse_moe.experts.{e}.w2.weight"
                yield moe, ours[moe], tensor[e]
        elif name.endswith("mlp.gate.weight"):
            yield f"{prefix}.block_sparse_moe.gate.weight", ours[f"{prefix}.block_sparse_moe.gate.weight"], tensor
        else:
            yield name, ours[name], tensor


@pytest.mark.parametrize("kind", ["llama", "mistral"])
def test_mixtral_matches_mergekit_moe(kind, llama_family, mistral_family, tmp_path):
    base, ft1, ft2 = llama_family if kind == "llama" else mistral_family  # mistral: 3 shards each
    config = moe_config(base, [ft1, ft2, base])
    config["experts"][0]["negative_prompts"] = [PROMPTS[1][0]]
    path = write_config(tmp_path, config)
    build_moe(path, tmp_path / "ours")
    theirs = load_dir(run_mergekit_moe(path, tmp_path / "mergekit"))
    assert _config(tmp_path / "ours") == _config(tmp_path / "mergekit")
    ours = load_dir(tmp_path / "ours")
    pairs = list(_mixtral_pairs(ours, theirs, 3))
    assert len({name for name, _, _ in pairs}) == len(ours)  # every tensor of ours is compared
    for name, a, b in pairs:
        if name.endswith("gate.weight"):
            assert (a - b).abs().max() <= ROUTER_ATOL_BF16, name
            assert torch.nn.functional.cosine_similarity(a, b, dim=-1).min() >= ROUTER_COS_BF16, name
        else:
            assert torch.equal(a, b), name


def test_hidden_rows_are_mergekits_formula_in_float32(llama_family, tmp_path, monkeypatch):
    """mergekit's own get_gate_params (prompt format, layer, averaging, normalisation), with the
    base loaded in float32 instead of bfloat16, gives mergesmith's routers."""
    import transformers
    from mergekit.common import ModelReference
    from mergekit.moe import router
    from mergekit.moe.config import Expert

    base, ft1, ft2 = llama_family
    config = moe_config(base, [ft1, ft2, base])
    config["experts"][1]["negative_prompts"] = [PROMPTS[0][1], PROMPTS[2][0]]
    build_moe(write_config(tmp_path, config), tmp_path / "ours")
    ours = load_dir(tmp_path / "ours")

    loader = transformers.AutoModelForCausalLM

    class Float32:
        @staticmethod
        def from_pretrained(*args, **kwargs):
            return loader.from_pretrained(*args, **{**kwargs, "torch_dtype": torch.float32})

    monkeypatch.setattr(router, "AutoModelForCausalLM", Float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(base)
    tokenizer.padding_side, tokenizer.pad_token_id = "left", tokenizer.bos_token_id
    experts = [Expert.model_validate(e) for e in config["experts"]]
    gates = router.get_gate_params(ModelReference.parse(str(base)), tokenizer, experts, mode="hidden", device="cpu")
    for layer in range(4):
        got = ours[f"model.layers.{layer}.block_sparse_moe.gate.weight"]
        assert torch.allclose(got, gates[layer].float(), atol=2e-6, rtol=0), layer


def test_qwen2_moe_and_cheap_embed_match_mergekit_moe(llama_family, tmp_path):
    base, ft1, ft2 = llama_family
    config = moe_config(base, [ft1, ft2], gate_mode="cheap_embed", architecture="qwen", experts_per_token=1)
    config["experts"][1]["residual_scale"] = 0.5
    config["experts"][0]["negative_prompts"] = [PROMPTS[2][1]]
    # mergekit 0.1.5 opens only the base and the routed experts: a shared expert must be one of them.
    config["shared_experts"] = [{"source_model": str(base), "positive_prompts": PROMPTS[2], "residual_scale": 0.25}]
    path = write_config(tmp_path, config)
    build_moe(path, tmp_path / "ours")
    theirs = load_dir(run_mergekit_moe(path, tmp_path / "mergekit"))
    ours = load_dir(tmp_path / "ours")
    assert _config(tmp_path / "ours") == _config(tmp_path / "mergekit")
    assert set(ours) == set(theirs)
    for name, tensor in theirs.items():
        if name.endswith(("mlp.gate.weight", "shared_expert_gate.weight")):
            assert torch.allclose(ours[name], tensor, atol=1e-6, rtol=0), name
        else:
            assert torch.equal(ours[name], tensor), name
