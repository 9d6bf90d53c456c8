"""The streaming writer: exact bytes, sharding, index written last."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from safetensors import safe_open

from mergesmith.errors import ConfigError
from mergesmith.io.writer import INDEX_NAME, ShardedWriter, TensorSlot, parse_size


def _tensors():
    return {
        "a.weight": torch.arange(6, dtype=torch.float32).reshape(2, 3),
        "b.bias": torch.tensor([1.5, -2.0], dtype=torch.bfloat16),
        "c.weight": torch.arange(4, dtype=torch.float16).reshape(2, 2),
    }


def _write(directory, tensors, shard_size, direct=True):
    slots = [TensorSlot(n, tuple(t.shape), t.dtype) for n, t in tensors.items()]
    writer = ShardedWriter(directory, slots, shard_size, direct=direct)
    for name in reversed(list(tensors)):  # any order: each tensor has its own place
        writer.write(name, tensors[name])
    return writer.finish()


@pytest.mark.parametrize("direct", [True, False], ids=["o_direct", "page_cache"])
def test_single_file_golden_bytes(tmp_path, direct):
    files = _write(tmp_path, _tensors(), 10**9, direct)
    assert files == ["model.safetensors"]
    data = (tmp_path / "model.safetensors").read_bytes()
    header_len = int.from_bytes(data[:8], "little")
    assert header_len % 8 == 0
    header = json.loads(data[8 : 8 + header_len])
    assert header["a.weight"] == {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}
    assert header["b.bias"] == {"dtype": "BF16", "shape": [2], "data_offsets": [24, 28]}
    assert header["c.weight"] == {"dtype": "F16", "shape": [2, 2], "data_offsets": [28, 36]}
    assert len(data) == 8 + header_len + 36
    # Independently of the writer: the data section is each tensor's raw little-endian bytes in
    # offset order, and the header is JSON padded with spaces (the safetensors format).
    raw = b"".join(t.contiguous().view(torch.uint8).numpy().tobytes() for t in _tensors().values())
    assert data[8 + header_len :] == raw
    text = data[8 : 8 + header_len].decode("utf-8")
    assert text.rstrip(" ").endswith("}")  # the JSON object, then padding of spaces only
    assert set(json.loads(text)) - {"__metadata__"} == set(_tensors())
    # Pinned: the whole file's bytes (changes only if the layout rules change on purpose).
    assert hashlib.sha256(data).hexdigest() == GOLDEN_SHA256
    assert not (tmp_path / INDEX_NAME).exists()


def test_safetensors_reads_every_tensor_back(tmp_path):
    _write(tmp_path, _tensors(), 10**9)
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as fh:
        for name, tensor in _tensors().items():
            assert torch.equal(fh.get_tensor(name), tensor)


def test_shards_and_index(tmp_path):
    # a (24 B) fills shard 1; b (4 B) and c (8 B) fit together in shard 2.
    files = _write(tmp_path, _tensors(), 24)
    assert files == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    index = json.loads((tmp_path / INDEX_NAME).read_text())
    assert index["metadata"]["total_size"] == 36
    assert index["weight_map"] == {"a.weight": files[0], "b.bias": files[1], "c.weight": files[1]}
    with safe_open(str(tmp_path / files[1]), framework="pt") as fh:
        assert torch.equal(fh.get_tensor("c.weight"), _tensors()["c.weight"])


def test_unwritten_slot_is_an_error(tmp_path):
    slots = [TensorSlot("x", (2,), torch.float32)]
    writer = ShardedWriter(tmp_path, slots, 100)
    with pytest.raises(Exception, match="never written"):
        writer.finish()
    writer.close()


@pytest.mark.parametrize(
    "text,expected", [("5GB", 5 * 10**9), ("500MiB", 500 * 2**20), ("1000B", 1000), ("1.5kb", 1500)]
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


def test_parse_size_rejects_nonsense():
    with pytest.raises(ConfigError, match="not a size"):
        parse_size("five gigs")


GOLDEN_SHA256 = "832f88bdac338f73124eed695d01efc5fcf8f826a825f58fd3c8c4f12b9cb4b3"


def test_many_shards_warn_about_the_shard_size(tmp_path):
    tensors = {f"t{i}": torch.zeros(4) for i in range(120)}
    slots = [TensorSlot(n, tuple(t.shape), t.dtype) for n, t in tensors.items()]
    with pytest.warns(UserWarning, match="splits the output into 120 shards"):
        writer = ShardedWriter(tmp_path, slots, 16)
    writer.close()
