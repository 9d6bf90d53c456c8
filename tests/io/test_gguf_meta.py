"""GGUF metadata read once (io/gguf_layout.py, gguf_meta.py, gguf_config.py), checked against gguf-py
and transformers.

* Every metadata value type and the tensor table, against gguf-py's own reader.
* config.json derived from the metadata, against transformers' GGUF config loader (SmolLM2).
* What makes planning cheap: no torch, no transformers, arrays left in the file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

gguf = pytest.importorskip("gguf")
np = pytest.importorskip("numpy")

from test_gguf import HIDDEN, N_HEAD, VOCAB, pico_tensors, smollm2, write_gguf, write_pico_llama  # noqa: E402

from mergesmith.errors import ArchitectureError, InputFormatError  # noqa: E402
from mergesmith.io.gguf import GGUFTensorReader, gguf_generation_config, gguf_hf_config  # noqa: E402
from mergesmith.io.gguf_layout import ArrayValue  # noqa: E402
from mergesmith.io.gguf_meta import GGUFMeta  # noqa: E402

__all__ = ["smollm2"]  # the module-scoped fixture, shared with test_gguf.py
QT = gguf.GGMLQuantizationType
VT = gguf.GGUFValueType
EVERY_TYPE = [
    ("u8", VT.UINT8, 200),
    ("i8", VT.INT8, -100),
    ("u16", VT.UINT16, 60000),
    ("i16", VT.INT16, -3),
    ("u32", VT.UINT32, 2**32 - 1),
    ("i32", VT.INT32, -(2**31)),
    ("f32", VT.FLOAT32, 1e-5),
    ("bool", VT.BOOL, True),
    ("str", VT.STRING, "héllo"),
    ("u64", VT.UINT64, 2**64 - 1),
    ("i64", VT.INT64, -(2**63)),
    ("f64", VT.FLOAT64, 0.1),
    ("ints", VT.ARRAY, [1, -2, 3]),
    ("reals", VT.ARRAY, [0.5, -1.25]),
    ("words", VT.ARRAY, ["a", "", "ü"]),
]


def write_every_type(path: Path, endian=gguf.GGUFEndian.LITTLE) -> Path:
    writer = gguf.GGUFWriter(str(path), "llama", endianess=endian)
    writer.add_block_count(1)
    writer.add_head_count(1)
    for key, vtype, value in EVERY_TYPE:
        writer.add_key_value(f"test.{key}", value, vtype)
    writer.add_tensor("token_embd.weight", np.arange(12, dtype=np.float32).reshape(3, 4))
    writer.add_tensor("output_norm.weight", np.arange(4, dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("endian", [gguf.GGUFEndian.LITTLE, gguf.GGUFEndian.BIG], ids=["little", "big"])
def test_every_value_type_and_the_tensor_table_match_gguf_py(tmp_path, endian):
    path = write_every_type(tmp_path / "types.gguf", endian)
    meta, theirs = GGUFMeta.read(path), gguf.GGUFReader(str(path))
    assert set(meta.layout.metadata) == {k for k in theirs.fields if not k.startswith("GGUF.")}
    for key, field in theirs.fields.items():
        if not key.startswith("GGUF."):
            assert meta.get(key) == field.contents(), key
    assert meta.get("test.f32") == pytest.approx(1e-5, rel=1e-7) and meta.get("test.str") == "héllo"
    assert [(s.name, s.dims, s.ggml_type, s.start, s.nbytes) for s in meta.tensors] == [
        (t.name, tuple(int(d) for d in t.shape), int(t.tensor_type), int(t.data_offset), int(t.n_bytes))
        for t in theirs.tensors
    ]
    assert meta.layout.order == ("<" if endian == gguf.GGUFEndian.LITTLE else ">")


def test_arrays_are_left_in_the_file_until_asked_for(tmp_path):
    meta = GGUFMeta.read(write_every_type(tmp_path / "types.gguf"))
    words = meta.layout.metadata["test.words"][1]
    assert isinstance(words, ArrayValue) and words.count == 3
    assert meta.count("test.words") == 3 and meta.count("test.u8") is None and meta.count("absent") is None
    assert meta.get("test.words") == ["a", "", "ü"]


def test_nested_arrays_decode_as_nested_lists(tmp_path):
    path = tmp_path / "nested.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_array("test.nested", [[1, 2], [3]])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    assert GGUFMeta.read(path).get("test.nested") == [[1, 2], [3]]


def test_big_endian_tensors_read_as_little_endian_ones(tmp_path):
    little = GGUFTensorReader(write_every_type(tmp_path / "le.gguf"))
    big = GGUFTensorReader(write_every_type(tmp_path / "be.gguf", gguf.GGUFEndian.BIG))
    for name in little.keys():
        assert big.info(name) == little.info(name)
        assert torch.equal(big.get(name), little.get(name)), name
    assert torch.equal(little.get("model.norm.weight"), torch.arange(4, dtype=torch.float16))


def test_a_file_changed_after_opening_is_refused_not_misread(tmp_path):
    path = write_pico_llama(tmp_path / "pico.gguf", pico_tensors())
    reader = GGUFTensorReader(path)
    write_pico_llama(tmp_path / "other.gguf", pico_tensors(seed=1), QT.F16)
    os.replace(tmp_path / "other.gguf", path)
    with pytest.raises(InputFormatError, match=r"pico\.gguf: the GGUF file changed after mergesmith opened it"):
        reader.get("model.layers.0.self_attn.q_proj.weight")


def test_opening_and_configuring_imports_neither_torch_nor_transformers(tmp_path):
    """What keeps `mergesmith plan` of a GGUF near the cost of a safetensors plan (bench/bench_gguf_plan.py)."""
    path = write_pico_llama(tmp_path / "pico.gguf", pico_tensors())
    code = (
        "import sys; from mergesmith.io.gguf import GGUFTensorReader, gguf_hf_config\n"
        f"r = GGUFTensorReader({str(path)!r}); [r.info(n) for n in r.keys()]; gguf_hf_config(r.meta)\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


# --- config.json from the metadata ---------------------------------------------------------


def test_pico_config(tmp_path):
    config = gguf_hf_config(write_pico_llama(tmp_path / "pico.gguf", pico_tensors()))
    assert config == {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": VOCAB,
        "hidden_size": HIDDEN,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": N_HEAD,
        "num_key_value_heads": 2,
        "tie_word_embeddings": False,
        "attention_bias": False,
        "mlp_bias": False,
        "hidden_act": "silu",
    }  # no vocab_size key and no token list: the embedding's rows; lm_head present: untied


def test_config_reads_biases_and_token_ids_from_the_file(tmp_path):
    tensors = {"token_embd.weight": np.zeros((5, 8), np.float32), "blk.0.attn_q.bias": np.zeros(8, np.float32)}
    path = tmp_path / "biased.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    for add, value in [
        (writer.add_block_count, 1),
        (writer.add_embedding_length, 8),
        (writer.add_head_count, 2),
        (writer.add_feed_forward_length, 16),
        (writer.add_bos_token_id, 0),
        (writer.add_eos_token_id, 4),
    ]:
        add(value)
    writer.add_token_list(["a", "b", "c", "d", "e", "f"])
    for name, array in tensors.items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    config = gguf_hf_config(path)
    assert (config["attention_bias"], config["mlp_bias"], config["tie_word_embeddings"]) == (True, False, True)
    assert config["vocab_size"] == 6  # the token list's length wins over the embedding's rows
    assert (config["bos_token_id"], config["eos_token_id"]) == (0, 4)
    assert config["num_key_value_heads"] == 2 and gguf_generation_config(path) == {"bos_token_id": 0, "eos_token_id": 4}


@pytest.mark.parametrize(
    "kvs, why",
    [
        ({}, "GGUF metadata has no llama.embedding_length"),
        ({"llama.embedding_length": (VT.STRING, "64")}, "llama.embedding_length = '64', expected one positive integer"),
        (
            {"llama.embedding_length": (VT.UINT32, 64), "tokenizer.ggml.eos_token_id": (VT.FLOAT32, 2.0)},
            "tokenizer.ggml.eos_token_id = 2.0, expected one integer >= 0",
        ),
        (
            {"llama.embedding_length": (VT.UINT32, 64), "llama.rope.freq_base": (VT.FLOAT32, -1.0)},
            "llama.rope.freq_base = -1.0, expected one positive number",
        ),
    ],
)
def test_config_errors_name_the_file_and_key(tmp_path, kvs, why):
    path = tmp_path / "bad.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_head_count(2)
    writer.add_feed_forward_length(16)
    for key, (vtype, value) in kvs.items():
        writer.add_key_value(key, value, vtype)
    writer.add_tensor("token_embd.weight", np.zeros((4, 64), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(InputFormatError) as caught:
        gguf_hf_config(path)
    assert str(path) in str(caught.value) and why in str(caught.value)


def test_unsupported_architecture_is_refused_by_every_entry_point(tmp_path):
    path = write_gguf(tmp_path / "other.gguf", "gpt2", {"token_embd.weight": np.zeros((4, 8), np.float32)})
    meta = GGUFMeta.read(path)  # reading the header is fine; using it as a llama is not
    for read in (GGUFTensorReader, gguf_hf_config, lambda p: meta.architecture()):
        with pytest.raises(ArchitectureError, match=r"other\.gguf: GGUF architecture 'gpt2' is not supported"):
            read(path)


# --- SmolLM2-135M against gguf-py and transformers -------------------------------------------


@pytest.mark.smollm2
def test_smollm2_metadata_and_tensor_table_match_gguf_py(smollm2):
    meta, theirs = GGUFMeta.read(smollm2), gguf.GGUFReader(str(smollm2))
    for key, field in theirs.fields.items():
        if not key.startswith("GGUF."):
            assert meta.get(key) == field.contents(), key  # the 49k tokens and 48.9k merges too
    assert meta.count(gguf.Keys.Tokenizer.LIST) == 49152
    assert [(s.name, s.dims, s.ggml_type, s.start, s.nbytes) for s in meta.tensors] == [
        (t.name, tuple(int(d) for d in t.shape), int(t.tensor_type), int(t.data_offset), int(t.n_bytes))
        for t in theirs.tensors
    ]


@pytest.mark.smollm2
def test_smollm2_config_equals_transformers(smollm2):
    transformers = pytest.importorskip("transformers")
    ours = gguf_hf_config(GGUFTensorReader(smollm2).meta)
    theirs = transformers.AutoConfig.from_pretrained(str(smollm2.parent), gguf_file=smollm2.name).to_dict()
    # transformers leaves "architectures" empty for GGUF, and version 5 nests rope_theta.
    assert not theirs.get("architectures") and ours["architectures"] == ["LlamaForCausalLM"]
    theirs["architectures"] = ours["architectures"]
    theirs.setdefault("rope_theta", (theirs.get("rope_parameters") or {}).get("rope_theta"))
    assert {key: theirs.get(key) for key in ours} == ours  # every key we write, key for key
    # ... and transformers builds the very same config from ours as from the GGUF.
    rebuilt = transformers.AutoConfig.for_model(**ours).to_dict()
    drop = {key for key in rebuilt.keys() | theirs.keys() if key.startswith("_")} | {"rope_theta"}
    assert {k: v for k, v in rebuilt.items() if k not in drop} == {k: v for k, v in theirs.items() if k not in drop}
    json.dumps(ours)
