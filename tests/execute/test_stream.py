"""Jobs read range by range from the files, or mapped and merged in ranges, give the same bits
as jobs whose every step takes each tensor as one range.

The models here have a 2.6M-element embedding and lm_head, so slerp's statistics span several
of its 2^20-element chunks; the ranges are small and odd, and so are the TIES threshold pass's
groups, so that its tie cutoff falls in a later group and inside a range.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import mergesmith
from mergesmith.execute import stream
from mergesmith.execute.method import MemorySource, statistic
from mergesmith.methods import steps, threshold
from mergesmith.methods.registry import METHODS
from mergesmith.methods.steps import Context

HIDDEN, INTER, LAYERS, VOCAB = 64, 128, 2, 40_000


def _tensors(seed: int, base: dict | None = None) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = {
        "model.embed_tokens.weight": (VOCAB, HIDDEN),
        "model.norm.weight": (HIDDEN,),
        "lm_head.weight": (VOCAB, HIDDEN),
    }
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        shapes.update(
            {
                p + "self_attn.q_proj.weight": (HIDDEN, HIDDEN),
                p + "self_attn.k_proj.weight": (HIDDEN // 2, HIDDEN),
                p + "self_attn.v_proj.weight": (HIDDEN // 2, HIDDEN),
                p + "self_attn.o_proj.weight": (HIDDEN, HIDDEN),
                p + "mlp.gate_proj.weight": (INTER, HIDDEN),
                p + "mlp.up_proj.weight": (INTER, HIDDEN),
                p + "mlp.down_proj.weight": (HIDDEN, INTER),
                p + "input_layernorm.weight": (HIDDEN,),
                p + "post_attention_layernorm.weight": (HIDDEN,),
            }
        )
    out = {}
    for name, shape in shapes.items():
        # bf16 values on a coarse grid: many equal magnitudes, so TIES' threshold has ties.
        noise = (torch.randn(shape, generator=g) * 8).round() / 256
        out[name] = (noise if base is None else base[name].float() + noise).to(torch.bfloat16)
    return out


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "intermediate_size": INTER,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": VOCAB,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
    }
    a = _tensors(0)
    paths = []
    for name, tensors in (("a", a), ("b", _tensors(1, a))):
        (root / name).mkdir()
        save_file(tensors, root / name / "model.safetensors", metadata={"format": "pt"})
        (root / name / "config.json").write_text(json.dumps(config))
        paths.append(root / name)
    return paths


RECIPES = {
    "slerp": {"merge_method": "slerp", "parameters": {"t": 0.3}},
    "ties": {"merge_method": "ties", "parameters": {"density": 0.4, "weight": 0.7}},
    "task_arithmetic": {"merge_method": "task_arithmetic", "parameters": {"weight": 0.6}},
    "linear": {"merge_method": "linear", "parameters": {"weight": 0.5}},
    "nearswap": {"merge_method": "nearswap", "parameters": {"t": 0.004}},
    "ram": {"merge_method": "ram", "parameters": {"epsilon": 0.01}},
    "ramplus_tl": {"merge_method": "ramplus_tl", "parameters": {"epsilon": 0.01, "r": 0.5}},
    "dare_ties": {"merge_method": "dare_ties", "parameters": {"density": 0.4, "weight": 0.7}},  # one whole step
}


def _recipe(method: str, a, b) -> dict:
    recipe = dict(RECIPES[method], dtype="bfloat16")
    recipe["models"] = [{"model": str(a)}, {"model": str(b)}]
    if method != "linear":
        recipe["base_model"] = str(a)
    return recipe


@pytest.mark.parametrize("mode", ["ranges", "mapped"])
@pytest.mark.parametrize("method", sorted(RECIPES))
def test_streamed_equals_whole(method, mode, pair, tmp_path, monkeypatch):
    """ranges: large tensors read range by range from the files; mapped: tensors mapped whole,
    merged and written range by range. Both against every step taking each tensor as one range."""
    from mergesmith.execute import runner

    a, b = pair
    monkeypatch.setattr(stream, "STREAM_MIN", 1 << 62)
    monkeypatch.setattr(steps, "RANGE", 1 << 62)
    mergesmith.merge(_recipe(method, a, b), tmp_path / "whole", seed=3)
    monkeypatch.undo()
    monkeypatch.setattr(stream, "STREAM_MIN", 1 if mode == "ranges" else 1 << 62)
    monkeypatch.setattr(steps, "RANGE", 100_003)
    monkeypatch.setattr(threshold, "GROUP_MIN", 300_009)
    from_files = []
    real = stream.FileSource
    monkeypatch.setattr(runner, "FileSource", lambda job, *args: from_files.append(job.output) or real(job, *args))
    mergesmith.merge(_recipe(method, a, b), tmp_path / "streamed", seed=3)
    if mode == "mapped" or METHODS[method].random:  # a whole-tensor step is never read in ranges
        assert from_files == []
    else:
        assert {"model.embed_tokens.weight", "lm_head.weight", "model.layers.0.mlp.up_proj.weight"} <= set(from_files)
    whole, streamed = (
        load_file(tmp_path / "whole" / "model.safetensors"),
        load_file(tmp_path / "streamed" / "model.safetensors"),
    )
    assert whole.keys() == streamed.keys()
    for name in whole:
        assert torch.equal(whole[name].view(torch.int16), streamed[name].view(torch.int16)), name


def test_streamed_ties_threshold_matches_whole_tensor_selection(pair, monkeypatch):
    """The threshold pass over odd ranges keeps exactly k entries, lowest indices first at the tie."""
    monkeypatch.setattr(steps, "RANGE", 100_003)
    monkeypatch.setattr(threshold, "GROUP_MIN", 300_009)
    a, b = (load_file(p / "model.safetensors")["lm_head.weight"].reshape(-1) for p in pair)
    spec = METHODS["ties"]
    params = spec.params_type.build(
        {"int8_mask": False, "normalize": True, "rescale": False, "lambda": 1.0},
        [{}, {"weight": 1.0, "density": 0.4, "tie_break": "index"}],
        0,
    )
    ((key, cutoff),) = statistic(
        threshold.MagnitudeThreshold(Context(params, 0, tuple(a.shape), a.dtype)), MemorySource([a, b])
    )
    k = int(0.4 * a.numel())
    mags = (b - a).abs().view(torch.int16).to(torch.int64) & 0x7FFF
    kept = (mags > key) | ((mags == key) & (torch.arange(a.numel()) <= cutoff))
    assert int(kept.sum()) == k
    assert int((mags == key).sum()) > int(((mags == key) & kept).sum()) > 0  # the cutoff splits the ties
    assert cutoff >= 300_009 and cutoff % 100_003 not in (0, 100_002)  # in a later group, inside a range
