"""Tests of the test harness: pico checkpoints are real and deterministic, ulps and parity count right."""

from __future__ import annotations

import json

import pytest
import torch
from pico import FINETUNE_SCALE, KINDS, VOCAB_SIZE, make_pico
from reference import (
    NAN_DISTANCE,
    Parity,
    compare,
    load_dir,
    run_mergekit,
    ulp_distance,
)

PROMPT = "The quick brown fox merges the weights."


# ---- pico checkpoints --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_pico_loads_in_transformers_with_every_tensor_from_the_file(kind, families):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = families[kind][0]
    model, info = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True)
    assert not info["missing_keys"], info
    assert not info["unexpected_keys"], info
    state = model.state_dict()
    for name, tensor in load_dir(path).items():  # nothing re-initialised behind our back
        assert torch.equal(state[name], tensor), name
    tok = AutoTokenizer.from_pretrained(path)
    assert len(tok) <= model.config.vocab_size == VOCAB_SIZE
    ids = tok(PROMPT, return_tensors="pt").input_ids
    assert ids[0, 0].item() == tok.bos_token_id
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], VOCAB_SIZE)
    assert torch.isfinite(logits).all()
    assert logits.std() > 0


@pytest.mark.parametrize("kind", ["llama", "gemma3"])
def test_pico_runs_in_a_text_generation_pipeline(kind, families):
    from transformers import pipeline

    generate = pipeline("text-generation", model=str(families[kind][0]), device="cpu")
    out = generate(PROMPT, max_new_tokens=4, do_sample=False)[0]["generated_text"]
    assert out.startswith(PROMPT) and len(out) > len(PROMPT)
    chat = generate.tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert chat == "<|user|>hi</s><|assistant|>"


def test_qwen2_is_tied_so_no_lm_head_in_the_file(qwen2_family):
    tensors = load_dir(qwen2_family[0])
    assert "model.embed_tokens.weight" in tensors and "lm_head.weight" not in tensors
    assert json.loads((qwen2_family[0] / "config.json").read_text())["tie_word_embeddings"] is True


def test_phi2_has_biases_dense_fc_and_final_layernorm(phi2_family):
    names = set(load_dir(phi2_family[0]))
    for name in (
        "lm_head.bias",
        "model.final_layernorm.weight",
        "model.layers.0.self_attn.dense.bias",
        "model.layers.0.mlp.fc1.weight",
        "model.layers.3.mlp.fc2.bias",
    ):
        assert name in names


def test_mistral_members_have_three_shards_and_an_index(mistral_family):
    for path in mistral_family:
        shards = sorted(path.glob("*.safetensors"))
        weight_map = json.loads((path / "model.safetensors.index.json").read_text())["weight_map"]
        assert len(shards) == 3
        assert sorted(set(weight_map.values())) == [s.name for s in shards]
        assert set(weight_map) == set(load_dir(path))


def test_gemma3_has_one_layer_type_per_layer(gemma3_family):
    config = json.loads((gemma3_family[0] / "config.json").read_text())
    assert config["model_type"] == "gemma3_text"
    assert config["architectures"] == ["Gemma3ForCausalLM"]
    assert len(config["layer_types"]) == config["num_hidden_layers"] == 4
    assert set(config["layer_types"]) == {"sliding_attention", "full_attention"}


def test_llama48_has_48_layers(llama48):
    config = json.loads((llama48 / "config.json").read_text())
    names = set(load_dir(llama48))
    assert config["num_hidden_layers"] == 48
    assert "model.layers.47.mlp.down_proj.weight" in names and "model.layers.48.mlp.down_proj.weight" not in names


def test_same_seed_gives_identical_bytes_and_another_seed_does_not(tmp_path):
    a = make_pico("phi2", tmp_path / "a", seed=7, shards=2)
    b = make_pico("phi2", tmp_path / "b", seed=7, shards=2)
    c = make_pico("phi2", tmp_path / "c", seed=8, shards=2)
    files = sorted(p.name for p in a.iterdir())
    assert files == sorted(p.name for p in b.iterdir())
    assert "model-00002-of-00002.safetensors" in files and "tokenizer.json" in files
    for name in files:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "model-00001-of-00002.safetensors").read_bytes() != (
        c / "model-00001-of-00002.safetensors"
    ).read_bytes()


def test_dtype_is_written_to_tensors_and_config(tmp_path):
    path = make_pico("llama", tmp_path / "bf16", seed=0, dtype=torch.bfloat16)
    assert {t.dtype for t in load_dir(path).values()} == {torch.bfloat16}
    assert json.loads((path / "config.json").read_text())["dtype"] == "bfloat16"


def test_finetunes_are_base_plus_distinct_mixed_sign_deltas(llama_family):
    base, ft1, ft2 = (load_dir(p) for p in llama_family)
    assert set(base) == set(ft1) == set(ft2)
    for name in base:
        d1, d2 = ft1[name] - base[name], ft2[name] - base[name]
        assert (d1 > 0).any() and (d1 < 0).any(), name
        assert 0.5 * FINETUNE_SCALE < d1.std() < 2 * FINETUNE_SCALE, name
        assert not torch.equal(d1, d2), name


# ---- ulp_distance ------------------------------------------------------------------------------

INT_OF = {
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
    torch.float32: torch.int32,
    torch.float64: torch.int64,
}


@pytest.mark.parametrize("dtype", list(INT_OF))
def test_ulp_neighbours_are_one_apart(dtype):
    x = torch.tensor([1.0, -3.5, 1e-3, 0.0, 100.0], dtype=dtype)
    up = (x.view(INT_OF[dtype]) + 1).view(dtype)  # next representable float away from zero
    two_up = (x.view(INT_OF[dtype]) + 2).view(dtype)
    assert ulp_distance(x, up).tolist() == [1] * 5
    assert ulp_distance(up, x).tolist() == [1] * 5
    assert ulp_distance(x, two_up).tolist() == [2] * 5
    assert ulp_distance(x, x).tolist() == [0] * 5


def test_ulp_agrees_with_nextafter_in_float32():
    x = torch.tensor([1.0, -2.0, 0.1], dtype=torch.float32)
    assert ulp_distance(x, torch.nextafter(x, torch.full_like(x, float("inf")))).tolist() == [1, 1, 1]


@pytest.mark.parametrize("dtype", list(INT_OF))
def test_ulp_signed_zeros_and_sign_crossing(dtype):
    zero, minus_zero = torch.tensor([0.0], dtype=dtype), torch.tensor([-0.0], dtype=dtype)
    assert ulp_distance(zero, minus_zero).tolist() == [0]
    tiny = torch.tensor([torch.finfo(dtype).smallest_normal], dtype=dtype)
    steps_from_zero = tiny.view(INT_OF[dtype]).item()  # its bit pattern counts ulps up from +0
    assert ulp_distance(tiny, -tiny).tolist() == [2 * steps_from_zero]
    assert ulp_distance(-tiny, zero).tolist() == [steps_from_zero]
    one = torch.tensor([1.0], dtype=dtype)
    assert ulp_distance(one, -one).item() == 2 * one.view(INT_OF[dtype]).item()


def test_ulp_nan_and_float64_extremes():
    nan, inf = float("nan"), float("inf")
    a = torch.tensor([nan, nan, 1.0, inf], dtype=torch.float32)
    b = torch.tensor([nan, 1.0, nan, torch.finfo(torch.float32).max], dtype=torch.float32)
    assert ulp_distance(a, b).tolist() == [0, NAN_DISTANCE, NAN_DISTANCE, 1]
    big = torch.finfo(torch.float64).max
    huge = ulp_distance(torch.tensor([big], dtype=torch.float64), torch.tensor([-big], dtype=torch.float64))
    assert huge.tolist() == [NAN_DISTANCE]  # saturated, not wrapped negative


def test_ulp_refuses_mixed_dtypes_and_shapes():
    with pytest.raises(TypeError):
        ulp_distance(torch.zeros(2), torch.zeros(2, dtype=torch.float64))
    with pytest.raises(ValueError):
        ulp_distance(torch.zeros(2), torch.zeros(3))


# ---- compare -----------------------------------------------------------------------------------


def test_compare_counts_each_category():
    one = torch.tensor([1.0, 2.0, 3.0])
    next_up = (one.view(torch.int32) + torch.tensor([0, 1, 0], dtype=torch.int32)).view(torch.float32)
    ref = {"same": one, "ulp": one, "far": one, "dtype": one, "shape": one, "gone": one, "ints": torch.tensor([1, 2])}
    ours = {
        "same": one.clone(),
        "ulp": next_up,
        "far": one + 1e-3,
        "dtype": one.double(),
        "shape": one[:2],
        "new": one,
        "ints": torch.tensor([1, 2]),
    }
    parity = compare(ours, ref)
    assert (parity.exact, parity.within_ulp) == (2, 1)
    assert parity.differing == ["dtype", "far", "shape"]
    assert (parity.missing, parity.extra) == (["gone"], ["new"])
    assert not parity.matches
    assert parity.summary().startswith("2 exact, 1 within 1 ulp, 3 differing (dtype: dtype torch.float64")
    assert "1 missing (gone)" in parity.summary() and "1 extra (new)" in parity.summary()


def test_compare_matches_when_all_within_one_ulp():
    parity = compare({"a": torch.ones(3)}, {"a": torch.ones(3)})
    assert parity == Parity(exact=1, within_ulp=0, differing=[], missing=[], extra=[])
    assert parity.matches and parity.summary() == "1 exact, 0 within 1 ulp, 0 differing"


# ---- mergekit smoke ----------------------------------------------------------------------------


@pytest.mark.mergekit
def test_run_mergekit_linear_is_half_sum(llama_family, tmp_path):
    base, ft1, _ = llama_family
    recipe = f"""
merge_method: linear
models:
  - model: {base}
    parameters: {{weight: 0.5}}
  - model: {ft1}
    parameters: {{weight: 0.5}}
dtype: float32
"""
    out = run_mergekit(recipe, tmp_path / "out")
    a, b = load_dir(base), load_dir(ft1)
    expected = {name: 0.5 * (a[name] + b[name]) for name in a}
    parity = compare(expected, load_dir(out))
    assert parity.matches, parity.summary()
    assert parity.exact + parity.within_ulp == len(a)
