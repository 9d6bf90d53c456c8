"""Untrusted input files: every bad one ends in one typed error naming the file (and tensor or
key) and the fix, and nothing outside the model directory is ever opened.

Grouped by reader: shard indexes and symlinks (safetensors and pickle), safetensors headers,
duplicate tensors, pickle contents, GGUF headers; each group has one end-to-end CLI case.
"""

from __future__ import annotations

import builtins
import io
import json
import os
import tracemalloc
from pathlib import Path

import pytest
import torch
from cli_helpers import LINEAR_TWO, copy_model, merge_fails
from safetensors.torch import load_file, save_file
from test_fuzz import ARRAY, STRING, U32, deadline, gguf_bytes, gguf_parts, safetensors_bytes

from mergesmith.errors import InputFormatError, MergesmithError
from mergesmith.io.pickle_reader import PickleReader
from mergesmith.io.reader import SAFETENSORS_INDEX, SafetensorsReader, read_safetensors_header

SHARD = "model-00001-of-00001.safetensors"


@pytest.fixture
def opened(monkeypatch) -> list[Path]:
    """Every path opened from here on (builtins.open, io.open, os.open), resolved."""
    seen: list[Path] = []

    def spy(real):
        def wrapper(file, *args, **kwargs):
            if isinstance(file, (str, bytes, os.PathLike)):
                seen.append(Path(os.fsdecode(file)).resolve())
            return real(file, *args, **kwargs)

        return wrapper

    for owner, name in ((builtins, "open"), (io, "open"), (os, "open")):
        monkeypatch.setattr(owner, name, spy(getattr(owner, name)))
    return seen


def two_tensors() -> dict[str, torch.Tensor]:
    return {"a.weight": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b.weight": torch.ones(4)}


def sharded_model(root: Path, b_entry) -> tuple[Path, Path]:
    """root/model (a.weight in its shard, b.weight mapped to ``b_entry``) and root/outside.safetensors,
    a valid file holding b.weight that must never be read."""
    model, outside = root / "model", root / "outside.safetensors"
    model.mkdir()
    save_file({"a.weight": two_tensors()["a.weight"]}, model / SHARD)
    save_file({"b.weight": two_tensors()["b.weight"]}, outside)
    entry = b_entry(model, outside) if callable(b_entry) else b_entry
    index = {"metadata": {}, "weight_map": {"a.weight": SHARD, "b.weight": entry}}
    (model / SAFETENSORS_INDEX).write_text(json.dumps(index))
    return model, outside


def symlink_out(model: Path, outside: Path) -> str:
    (model / "link.safetensors").symlink_to(outside)
    return "link.safetensors"


# --- 1. shards outside the model directory ---------------------------------------------------------


@pytest.mark.parametrize(
    "entry, shown",
    [
        ("../outside.safetensors", "'../outside.safetensors'"),
        (lambda model, outside: str(outside), "outside.safetensors'"),
        (symlink_out, "'link.safetensors' (a symlink to"),
    ],
)
def test_index_shard_outside_the_model_dir_is_refused_unopened(tmp_path, opened, entry, shown):
    model, outside = sharded_model(tmp_path, entry)
    opened.clear()
    with pytest.raises(InputFormatError) as caught:
        SafetensorsReader.open_dir(model)
    message = str(caught.value)
    for fragment in (str(model / SAFETENSORS_INDEX), "tensor 'b.weight'", shown, "outside the model directory"):
        assert fragment in message
    assert outside.resolve() not in opened
    assert (model / SHARD).resolve() not in opened  # refused before any shard is read


@pytest.mark.parametrize("entry", [5, None, ["x.safetensors"], ""])
def test_index_entry_that_is_not_a_file_name_is_refused(tmp_path, entry):
    model, _ = sharded_model(tmp_path, entry)
    with pytest.raises(InputFormatError, match=r"tensor 'b.weight' is mapped to .*not a shard file name"):
        SafetensorsReader.open_dir(model)


@pytest.mark.parametrize("name", ["model.safetensors", "weights.safetensors"])
def test_single_file_symlink_leaving_the_model_dir_is_refused_unopened(tmp_path, opened, name):
    model, outside = tmp_path / "model", tmp_path / "outside.safetensors"
    model.mkdir()
    save_file(two_tensors(), outside)
    (model / name).symlink_to(outside)
    opened.clear()
    with pytest.raises(InputFormatError, match=f"{name}: a symlink to .*outside the model directory"):
        SafetensorsReader.open_dir(model)
    assert outside.resolve() not in opened


def test_index_symlink_leaving_the_model_dir_is_refused_unopened(tmp_path, opened):
    model = tmp_path / "model"
    model.mkdir()
    save_file(two_tensors(), model / SHARD)
    (tmp_path / "index.json").write_text(json.dumps({"weight_map": {"a.weight": SHARD, "b.weight": SHARD}}))
    (model / SAFETENSORS_INDEX).symlink_to(tmp_path / "index.json")
    opened.clear()
    with pytest.raises(InputFormatError, match=f"{SAFETENSORS_INDEX}: a symlink to .*outside the model directory"):
        SafetensorsReader.open_dir(model)
    assert (tmp_path / "index.json").resolve() not in opened


def test_reader_built_directly_refuses_a_shard_leaving_its_dir(tmp_path, opened):
    """LoRA adapters build their reader from a file list, without open_dir: same rule."""
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    save_file(two_tensors(), tmp_path / "elsewhere.safetensors")
    (adapter / "adapter_model.safetensors").symlink_to(tmp_path / "elsewhere.safetensors")
    opened.clear()
    with pytest.raises(InputFormatError, match="adapter_model.safetensors: a symlink to"):
        SafetensorsReader(adapter, {"a.weight": adapter / "adapter_model.safetensors"})
    assert (tmp_path / "elsewhere.safetensors").resolve() not in opened


def test_symlinks_inside_the_model_dir_and_into_hub_blobs_are_read(tmp_path):
    repo = tmp_path / "models--org--name"
    (repo / "blobs").mkdir(parents=True)
    save_file(two_tensors(), repo / "blobs" / "0123abcd")
    snapshot = repo / "snapshots" / "c0ffee"
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").symlink_to("../../blobs/0123abcd")  # as huggingface_hub lays it out
    reader = SafetensorsReader.open_dir(snapshot)
    assert torch.equal(reader.get("a.weight"), two_tensors()["a.weight"])
    reader.close()
    local = tmp_path / "local"
    local.mkdir()
    save_file(two_tensors(), local / "weights.data")
    (local / "model.safetensors").symlink_to("weights.data")
    assert SafetensorsReader.open_dir(local).keys() == ["a.weight", "b.weight"]


def test_cli_index_pointing_outside_is_one_error_line(capsys, tmp_path, llama_family):
    base, ft1, _ = llama_family
    model = copy_model(ft1, tmp_path / "models" / "ft1")
    (model / "model.safetensors").rename(model / SHARD)
    names = list(load_file(model / SHARD))
    save_file({names[-1]: load_file(model / SHARD)[names[-1]]}, tmp_path / "models" / "stolen.safetensors")
    weight_map = {name: SHARD for name in names} | {names[-1]: "../stolen.safetensors"}
    (model / SAFETENSORS_INDEX).write_text(json.dumps({"weight_map": weight_map}))
    merge_fails(
        capsys,
        tmp_path,
        LINEAR_TWO.format(a=base, b=model),
        str(model / SAFETENSORS_INDEX),
        repr(names[-1]),
        "'../stolen.safetensors'",
        "outside the model",
    )


# --- 2. malformed index ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, why",
    [
        (b'{"metadata": {}}', "'weight_map' is None"),
        (b'{"weight_map": ["a.weight"]}', "'weight_map' is ['a.weight']"),
        (b"[1, 2]", "'weight_map' is None"),
        (b'{"weight_map": {"a.weight": ', "not valid JSON"),
        (b'{"weight_map": {"a\xff": "x"}}', "not UTF-8"),
        (b'{"weight_map": {"a.weight": "s1", "a.weight": "s2"}}', "lists 'a.weight' twice"),
        (b"[" * 200_000, "not valid JSON"),
    ],
)
def test_malformed_index_is_one_typed_error_naming_it(tmp_path, raw, why):
    (tmp_path / SAFETENSORS_INDEX).write_bytes(raw)
    with pytest.raises(InputFormatError) as caught:
        SafetensorsReader.open_dir(tmp_path)
    assert str(tmp_path / SAFETENSORS_INDEX) in str(caught.value) and why in str(caught.value)


# --- 3. one tensor in two shards ---------------------------------------------------------------------


def test_tensor_stored_in_two_shards_names_it_and_both(tmp_path):
    save_file(two_tensors(), tmp_path / "s1.safetensors")
    save_file({"b.weight": torch.zeros(4)}, tmp_path / "s2.safetensors")
    weight_map = {"a.weight": "s1.safetensors", "b.weight": "s2.safetensors"}
    (tmp_path / SAFETENSORS_INDEX).write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(InputFormatError) as caught:
        SafetensorsReader.open_dir(tmp_path)
    message = str(caught.value)
    assert "'b.weight' is stored twice" in message
    assert str(tmp_path / "s1.safetensors") in message and str(tmp_path / "s2.safetensors") in message


def test_pickle_tensor_stored_in_two_shards_names_it_and_both(tmp_path):
    torch.save({"a.weight": torch.ones(2), "b.weight": torch.ones(2)}, tmp_path / "p1.bin")
    torch.save({"b.weight": torch.zeros(2)}, tmp_path / "p2.bin")
    weight_map = {"a.weight": "p1.bin", "b.weight": "p2.bin"}
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(InputFormatError, match=r"'b.weight' is stored twice, in .*p1.bin and in .*p2.bin"):
        PickleReader.open_dir(tmp_path)


# --- 4. safetensors header ---------------------------------------------------------------------------


def header_file(path: Path, header, data: bytes = b"\0" * 16, length: int | None = None) -> Path:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(safetensors_bytes(text, data, length))
    return path


F32_2 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


@pytest.mark.parametrize(
    "header, why",
    [
        ([F32_2], "header is a JSON list, not an object"),
        ({"t": 5}, "tensor 't': header entry 5 is not an object"),
        ({"t": {"shape": [2], "data_offsets": [0, 8]}}, "tensor 't': dtype None"),
        ({"t": {**F32_2, "dtype": 4}}, "tensor 't': dtype 4"),
        ({"t": {"dtype": "F32", "data_offsets": [0, 8]}}, "tensor 't': shape None"),
        ({"t": {**F32_2, "shape": "2"}}, "shape '2' is not a list"),
        ({"t": {**F32_2, "shape": [2.0]}}, "shape [2.0] is not a list"),
        ({"t": {**F32_2, "shape": [True, 2]}}, "shape [True, 2] is not a list"),
        ({"t": {**F32_2, "shape": [-2]}}, "shape [-2] is not a list of non-negative"),
        ({"t": {**F32_2, "shape": [2**64, 0]}}, "more elements than a tensor can hold"),
        ({"t": {"dtype": "F32", "shape": [2]}}, "data_offsets None"),
        ({"t": {**F32_2, "data_offsets": [0, 8, 9]}}, "data_offsets [0, 8, 9] is not [begin, end]"),
        ({"t": {**F32_2, "data_offsets": [8, 0]}}, "data_offsets [8, 0] lie outside"),
        ({"t": {**F32_2, "data_offsets": [8, 24]}}, "data_offsets [8, 24] lie outside the file's 16 bytes"),
        ({"t": {**F32_2, "data_offsets": [0, 12]}}, "12 bytes do not hold shape [2] of F32"),
        ({"t": F32_2, "u": {**F32_2, "data_offsets": [4, 12]}}, "tensors 't' and 'u' share bytes"),
        (b'{"t\xff": 1}', "header is not UTF-8"),
        (b'{"t": 1, "t": 2}', "lists 't' twice"),
        (b"[" * 200_000, "not valid JSON"),
    ],
)
def test_bad_header_is_refused_at_open_naming_file_and_tensor(tmp_path, header, why):
    path = header_file(tmp_path / "model.safetensors", header)
    with pytest.raises(InputFormatError) as caught:
        SafetensorsReader.open_dir(tmp_path)  # at open: not first at get()
    assert str(path) in str(caught.value) and why in str(caught.value)


@pytest.mark.parametrize("length", [0, 10_000, 90_000_000, 2**63])
def test_header_length_beyond_the_file_reads_nothing_big(tmp_path, length):
    path = header_file(tmp_path / "model.safetensors", {"t": F32_2}, length=length)
    tracemalloc.start()
    try:
        with pytest.raises(InputFormatError, match="not a safetensors file .header length"):
            read_safetensors_header(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"{peak} bytes allocated for a {path.stat().st_size}-byte file"


def test_valid_header_with_gaps_and_empty_tensors_reads(tmp_path):
    header = {
        "t": F32_2,
        "e": {"dtype": "F16", "shape": [0, 3], "data_offsets": [8, 8]},
        "u": {"dtype": "U8", "shape": [2], "data_offsets": [12, 14]},
        "__metadata__": {"format": "pt"},
    }
    header_file(tmp_path / "model.safetensors", header, bytes(range(16)))
    reader = SafetensorsReader.open_dir(tmp_path)
    assert reader.get("e").shape == (0, 3) and reader.get("u").tolist() == [12, 13]


def test_cli_truncated_shard_is_one_error_line(capsys, tmp_path, llama_family):
    base, ft1, _ = llama_family
    model = copy_model(ft1, tmp_path / "cut")
    file = model / "model.safetensors"
    file.write_bytes(file.read_bytes()[:-100])
    merge_fails(capsys, tmp_path, LINEAR_TWO.format(a=base, b=model), str(file), "lie outside the file's")


# --- 6. pickle checkpoints -----------------------------------------------------------------------------


class _RunsCommand:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize(
    "payload, fragments",
    [
        (
            lambda marker: _RunsCommand(marker),
            [
                "the pickle needs the global 'posix.system'",
                "not a tensor type",
                "convert the checkpoint to safetensors",
            ],
        ),
        (lambda marker: __import__("fractions").Fraction(1, 2), ["the global 'fractions.Fraction'"]),
        (lambda marker: 3, ["entry 'extra' holds a value of type int, not a tensor"]),
    ],
)
def test_pickle_with_more_than_tensors_names_file_and_culprit(tmp_path, payload, fragments):
    marker = tmp_path / "ran"
    bin_file = tmp_path / "pytorch_model.bin"
    torch.save({"a.weight": torch.ones(2), "extra": payload(marker)}, bin_file)
    with pytest.raises(InputFormatError) as caught:
        PickleReader.open_dir(tmp_path)
    assert str(bin_file) in str(caught.value) and all(f in str(caught.value) for f in fragments)
    assert "\n" not in str(caught.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    "content, why",
    [
        (b"not a pickle at all", "cannot read pickle checkpoint"),
        (None, "holds a list, not a state dict"),
    ],
)
def test_unreadable_single_bin_is_a_typed_error(tmp_path, content, why):
    bin_file = tmp_path / "pytorch_model.bin"
    if content is None:
        torch.save([torch.ones(2)], bin_file)
    else:
        bin_file.write_bytes(content)
    with pytest.raises(InputFormatError, match=why) as caught:
        PickleReader.open_dir(tmp_path)
    assert str(bin_file) in str(caught.value) and "\n" not in str(caught.value)


def test_pickle_index_shard_outside_is_refused_unopened(tmp_path, opened):
    model = tmp_path / "model"
    model.mkdir()
    torch.save({"a.weight": torch.ones(2)}, model / "pytorch_model-1.bin")
    torch.save({"b.weight": torch.ones(2)}, tmp_path / "outside.bin")
    weight_map = {"a.weight": "pytorch_model-1.bin", "b.weight": "../outside.bin"}
    (model / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    opened.clear()
    with pytest.raises(InputFormatError, match=r"pytorch_model.bin.index.json: tensor 'b.weight' .*'../outside.bin'"):
        PickleReader.open_dir(model)
    assert (tmp_path / "outside.bin").resolve() not in opened


def test_cli_pickle_global_is_one_error_line(capsys, tmp_path, llama_family):
    base, ft1, _ = llama_family
    model = copy_model(ft1, tmp_path / "evil")
    tensors = load_file(model / "model.safetensors")
    (model / "model.safetensors").unlink()
    torch.save({**tensors, "x": _RunsCommand(tmp_path / "ran")}, model / "pytorch_model.bin")
    merge_fails(
        capsys,
        tmp_path,
        LINEAR_TWO.format(a=base, b=model),
        str(model / "pytorch_model.bin"),
        "the global 'posix.system'",
        extra=["--allow-pickle"],
    )
    assert not (tmp_path / "ran").exists()


# --- 5. GGUF headers -------------------------------------------------------------------------------------


def gguf_with(kvs_edit=None, tensors_edit=None, counts=None, cut: int | None = None) -> bytes:
    kvs, tensors, data = gguf_parts()
    if kvs_edit:
        kvs = kvs_edit(kvs)
    if tensors_edit:
        tensors = tensors_edit(tensors)
    raw = gguf_bytes(kvs, tensors, data, counts)
    return raw[:cut] if cut is not None else raw


def _set(kvs, key, *entry):
    return [(k, *entry) if k == key else (k, *rest) for k, *rest in kvs]


@pytest.mark.parametrize(
    "raw, why",
    [
        (b"", "shorter than the 24-byte GGUF header"),
        (b"GGML" + bytes(40), "not a GGUF file"),
        (gguf_with(cut=-600), "past the end of the file"),
        (gguf_with(counts=(5, 2**40)), "claims 1099511627776 metadata entries"),
        (gguf_with(lambda kvs: _set(kvs, "tokenizer.ggml.scores", ARRAY, (6, [0.0]), 2**40)), "array of 1099511627776"),
        (gguf_with(lambda kvs: _set(kvs, "general.name", STRING, "pico", 2**40)), "'general.name': a string"),
        (gguf_with(lambda kvs: kvs + [kvs[0]]), "metadata key 'general.architecture' appears twice"),
        (gguf_with(lambda kvs: kvs + [("x", 77, 0)]), "metadata key 'x' has value type 77"),
        (gguf_with(lambda kvs: kvs + [("general.alignment", U32, 3)]), "general.alignment must be a power of two"),
        (gguf_with(lambda kvs: kvs + [("n\udcff", U32, 3)]), "a metadata key b'n\\xed\\xb3\\xbf' is not UTF-8"),
        (gguf_with(tensors_edit=lambda ts: ts + [("extra", (4096,), 0, 0)]), "tensor 'extra': its 16384 bytes"),
        (gguf_with(tensors_edit=lambda ts: ts + [ts[0]]), "tensor 'token_embd.weight' appears twice"),
        (gguf_with(tensors_edit=lambda ts: ts + [("q", (31,), 8, 0)]), "not whole blocks of 32"),
        (gguf_with(tensors_edit=lambda ts: ts + [("z", (2**63, 2**63, 0), 0, 0)]), "more elements than an array"),
        (gguf_with(tensors_edit=lambda ts: ts + [("t", (1,), 999, 0)]), "has type 999, which is not a ggml type"),
        (gguf_with(lambda kvs: _set(kvs, "llama.block_count", U32, 2**32 - 1)), "says 4294967295 blocks"),
        (
            gguf_with(lambda kvs: _set(kvs, "general.architecture", ARRAY, (STRING, ["llama"]))),
            "architecture ['llama']",
        ),
        (
            gguf_with(lambda kvs: _set(kvs, "general.architecture", STRING, b"ll\xffama")),
            "general.architecture is unreadable",
        ),
        (gguf_with(tensors_edit=lambda ts: [("blk.0.attn_q.weight", (), 0, 0)]), "has no rows"),
    ],
)
def test_bad_gguf_is_a_typed_error_naming_the_file(tmp_path, raw, why):
    pytest.importorskip("gguf")
    from mergesmith.io.gguf import GGUFTensorReader

    path = tmp_path / "m.gguf"
    path.write_bytes(raw)
    with deadline(10), pytest.raises(MergesmithError) as caught:
        GGUFTensorReader(path)
    assert str(path) in str(caught.value) and why in str(caught.value)


def test_gguf_array_length_past_the_end_is_refused_before_gguf_py_walks_it(tmp_path, monkeypatch):
    """gguf-py walks a claimed array element by element: 2**40 empty ones would hang it."""
    gguf = pytest.importorskip("gguf")
    from mergesmith.io.gguf import GGUFTensorReader

    monkeypatch.setattr(gguf, "GGUFReader", lambda *a: pytest.fail("gguf-py was handed the file"))
    path = tmp_path / "m.gguf"
    path.write_bytes(gguf_with(lambda kvs: kvs + [("x", ARRAY, (0, []), 2**40)]))
    with deadline(10), pytest.raises(InputFormatError, match="metadata key 'x': an array of 1099511627776 values"):
        GGUFTensorReader(path)


def test_cli_broken_gguf_is_one_error_line(capsys, tmp_path, llama_family):
    pytest.importorskip("gguf")
    base, _, _ = llama_family
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(gguf_with(counts=(5, 2**40)))
    merge_fails(capsys, tmp_path, LINEAR_TWO.format(a=base, b=broken), str(broken), "metadata entries")
