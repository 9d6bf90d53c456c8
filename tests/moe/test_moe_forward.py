"""The router pass without transformers' model code (moe/forward.py): the same states, bit for
bit, as transformers' own forward, and the model-code path wherever a config is not plain."""

from __future__ import annotations

import json

import pytest
import torch
from cli_helpers import output_tensors
from moe_configs import moe_config, write_config
from pico import make_family

from mergesmith.io.resolve import close_models, open_models
from mergesmith.moe import forward, gates, hidden
from mergesmith.moe.build import build_moe

PROMPTS = ["The quick brown fox jumps over", "Hi", "Numbers like 1, 2, 3 and 42 appear here"]


def _both_paths(model_dir):
    """(native states, model-code states, attention mask) of PROMPTS, left-padded."""
    models = open_models([str(model_dir)])
    base = models[str(model_dir)]
    try:
        batch = gates.tokenize(gates.load_tokenizer(model_dir), PROMPTS)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        assert bool((mask == 0).any())  # the batch is padded: the mask matters
        dtype = hidden.compute_dtype(base, "cpu", torch)
        with torch.inference_mode():
            native = torch.stack(forward.layer_inputs(base, ids, mask, dtype, "cpu", lambda: None))
        reference = torch.stack(hidden._model_code_states(base, ids, mask, dtype, "cpu", lambda: None))
    finally:
        close_models(models)
    return native, reference, mask.bool()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("kind", forward.FAMILIES)
def test_states_equal_transformers_forward_bit_for_bit(kind, dtype, tmp_path):
    """Grouped key/value heads (4 heads, 2 groups), qwen2's q/k/v biases (a fine-tune: non-zero),
    rotary embeddings, RMSNorm in float32, left padding: every prompt token's state entering
    every layer equals transformers', in float32 and in bfloat16 (the base's own dtype)."""
    model_dir = make_family(kind, tmp_path, n_finetunes=1, seed=3, dtype=dtype)[1]
    config = json.loads((model_dir / "config.json").read_text())
    assert forward.native(config, 64) and config["num_key_value_heads"] < config["num_attention_heads"]
    native, reference, mask = _both_paths(model_dir)
    assert native.shape == reference.shape and native.shape[0] == config["num_hidden_layers"]
    assert torch.equal(native[:, mask], reference[:, mask])
    assert bool(native.isfinite().all())  # padding positions too: nothing NaN leaks into averages
    if kind == "qwen2":
        bias = output_tensors(model_dir)["model.layers.0.self_attn.q_proj.bias"]
        assert bool((bias != 0).any())


@pytest.mark.parametrize(
    "change, tokens",
    [
        ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, 10),
        ({"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}}, 10),
        ({"partial_rotary_factor": 0.5}, 10),
        ({"hidden_act": "gelu"}, 10),
        ({"mlp_bias": True}, 10),
        ({"pretraining_tp": 2}, 10),
        ({"model_type": "gemma"}, 10),
        ({"model_type": "mistral", "sliding_window": 8}, 9),
        ({"model_type": "qwen2", "use_sliding_window": True, "sliding_window": 8}, 9),
    ],
)
def test_configs_that_are_not_plain_take_the_model_code_path(change, tokens):
    plain = {"model_type": "llama", "hidden_act": "silu", "rope_theta": 10000.0}
    assert forward.native(plain, tokens) and forward.native({**plain, "sliding_window": 8}, 9)  # llama: no window
    assert not forward.native({**plain, **change}, tokens)


def test_a_base_with_a_short_sliding_window_is_run_by_transformers(mistral_family, tmp_path, monkeypatch):
    """A mistral base whose window is shorter than the prompts: transformers' forward (which
    applies the window), never the native pass; the build completes with unit router rows."""
    base = tmp_path / "windowed"
    base.mkdir()
    for file in mistral_family[0].iterdir():
        (base / file.name).write_bytes(file.read_bytes())
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**config, "sliding_window": 4}))
    used = []
    monkeypatch.setattr(forward, "layer_inputs", lambda *a: used.append("native"))
    code_path = hidden._model_code_states
    monkeypatch.setattr(hidden, "_model_code_states", lambda *a: used.append("model code") or code_path(*a))
    build_moe(write_config(tmp_path, moe_config(base, [mistral_family[1], mistral_family[2]])), tmp_path / "out")
    assert used == ["model code"]
    router = output_tensors(tmp_path / "out")["model.layers.0.block_sparse_moe.gate.weight"]
    assert torch.allclose(router.norm(dim=-1), torch.ones(2), atol=1e-6)
