"""GGUF checkpoints as merge inputs, read under their Hugging Face tensor names.

llama.cpp's HF→GGUF converter renames tensors (``model.layers.3.self_attn.q_proj.weight``
→ ``blk.3.attn_q.weight``), stores dimensions in reverse order, quantises, and for
llama-family attention reorders the rows of q (n_head) and k (n_head_kv) so that the two
rotary halves of every head interleave:

    W_gguf = W.reshape(n_head, 2, rows // n_head // 2, cols).swapaxes(1, 2).reshape(rows, cols)

``GGUFTensorReader`` undoes all of this one tensor per ``get()``; the file stays a memory
map, so only the tensor asked for is ever dequantised.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mergesmith.errors import ArchitectureError, InputFormatError, MissingTensorError
from mergesmith.io.gguf_layout import check_layout
from mergesmith.io.reader import TensorInfo

try:
    import gguf
    import numpy as np
except ImportError as exc:  # gguf is an optional extra; say how to get it.
    raise InputFormatError(
        f"reading GGUF files needs the gguf package ({exc}); pip install mergesmith[gguf]"
    ) from exc

# GGUF architecture name -> whether llama.cpp permuted the q/k rows when converting.
# Mistral is written by llama.cpp as "llama", so it is covered by the same entry.
_PERMUTES_QK = {gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA]: True}
_SUPPORTED = "llama (Llama, Mistral and SmolLM exports from llama.cpp)"

# transformers model_type -> the class name config.json lists under "architectures".
_HF_ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM"}

# Tensors the converter derives from the config (rope scaling); transformers recomputes them.
_DERIVED = {gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS]}

# Stored types that keep their dtype; every block-quantised type dequantises to float32.
_PLAIN = {
    gguf.GGMLQuantizationType.F32: torch.float32,
    gguf.GGMLQuantizationType.F16: torch.float16,
    gguf.GGMLQuantizationType.BF16: torch.bfloat16,
}


@dataclass(frozen=True)
class _Entry:
    gguf_name: str
    index: int  # position in GGUFReader.tensors, stable across reopening the file
    info: TensorInfo
    n_head: int | None  # head count to un-permute rows with, None when not permuted


# What gguf-py raises on a header it cannot parse. check_layout refuses such headers first, in
# words; this is the second line of defence, kept narrow so that our own bugs still surface.
_GGUF_PY_ERRORS = (OSError, ValueError, KeyError, IndexError, TypeError, OverflowError, struct.error, MemoryError)


def _open(path: Path) -> gguf.GGUFReader:
    if not path.is_file():
        raise InputFormatError(f"{path}: no such GGUF file; check the model path in the recipe")
    check_layout(path, gguf.GGML_QUANT_SIZES)
    try:
        return gguf.GGUFReader(str(path))
    except _GGUF_PY_ERRORS as exc:
        raise InputFormatError(f"{path}: not a readable GGUF file ({exc}); re-download or re-export it") from None


def _contents(field: gguf.ReaderField, path: Path) -> Any:
    try:
        return field.contents()
    except (ValueError, IndexError, TypeError) as exc:   # a string that is not UTF-8, an odd nesting
        raise InputFormatError(f"{path}: GGUF metadata {field.name} is unreadable ({exc}); re-export it") from None


def _field(reader: gguf.GGUFReader, key: str, path: Path, default: Any = None) -> Any:
    field = reader.get_field(key)
    if field is not None:
        return _contents(field, path)
    if default is not None:
        return default
    raise InputFormatError(f"{path}: GGUF metadata has no {key}; re-export the file with a current llama.cpp")


def _positive_int(reader: gguf.GGUFReader, key: str, path: Path, default: int | None = None) -> int:
    value = _field(reader, key, path, default)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        # Per-layer values (a list) only occur in architectures we do not read.
        raise InputFormatError(f"{path}: GGUF metadata {key} = {value!r}, expected one positive integer")
    return value


def _architecture(reader: gguf.GGUFReader, path: Path) -> str:
    arch = _field(reader, gguf.Keys.General.ARCHITECTURE, path)
    if not isinstance(arch, str) or arch not in _PERMUTES_QK:
        raise ArchitectureError(
            f"{path}: GGUF architecture {arch!r:.80} is not supported; mergesmith reads GGUF files of {_SUPPORTED}. "
            "Merge from the Hugging Face safetensors checkpoint instead."
        )
    return arch


def _hf_names(arch: str, n_blocks: int) -> dict[str, tuple[str, gguf.MODEL_TENSOR]]:
    """GGUF base name -> (transformers base name, tensor kind), from gguf-py's own table.

    gguf-py lists every source spelling it knows for a GGUF name (meta llama, gpt-neox, ...).
    transformers' spelling is the first one rooted at ``model.`` (backbone) or equal to
    ``lm_head`` (head); the SmolLM2 test pins the result against transformers' loader.
    """
    arch_enum = next(key for key, name in gguf.MODEL_ARCH_NAMES.items() if name == arch)
    table = gguf.get_tensor_name_map(arch_enum, n_blocks)
    names: dict[str, tuple[str, gguf.MODEL_TENSOR]] = {}
    for hf_name, (kind, gguf_name) in table.mapping.items():
        if gguf_name not in names and (hf_name.startswith("model.") or hf_name == "lm_head"):
            names[gguf_name] = (hf_name, kind)
    return names


def _split_suffix(name: str) -> tuple[str, str]:
    base, dot, suffix = name.rpartition(".")
    if dot and suffix in ("weight", "bias"):
        return base, "." + suffix
    return name, ""


def _result_dtype(tensor: gguf.ReaderTensor, path: Path) -> torch.dtype:
    qtype = tensor.tensor_type
    if qtype in _PLAIN:
        return _PLAIN[qtype]
    block_size, _ = gguf.GGML_QUANT_SIZES[qtype]
    if block_size > 1:
        return torch.float32
    raise InputFormatError(
        f"{path}: tensor {tensor.name} is stored as {qtype.name}, which is not a model weight type; "
        "re-export the GGUF with llama.cpp"
    )


class GGUFTensorReader:
    """One .gguf file as a ``TensorReader`` with Hugging Face names, shapes and row order."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._reader: gguf.GGUFReader | None = _open(self.path)
        self._entries = self._index(self._reader)

    def _index(self, reader: gguf.GGUFReader) -> dict[str, _Entry]:
        arch = _architecture(reader, self.path)
        n_blocks = _positive_int(reader, gguf.Keys.LLM.BLOCK_COUNT.format(arch=arch), self.path)
        if n_blocks > len(reader.tensors):   # gguf-py's name table below is built per block
            raise InputFormatError(f"{self.path}: GGUF metadata says {n_blocks} blocks but the file has only "
                                   f"{len(reader.tensors)} tensors; the metadata does not match, re-export the file")
        n_head = _positive_int(reader, gguf.Keys.Attention.HEAD_COUNT.format(arch=arch), self.path)
        # No head_count_kv means multi-head attention: as many kv heads as query heads.
        n_head_kv = _positive_int(reader, gguf.Keys.Attention.HEAD_COUNT_KV.format(arch=arch), self.path, n_head)
        heads = {gguf.MODEL_TENSOR.ATTN_Q: n_head, gguf.MODEL_TENSOR.ATTN_K: n_head_kv} if _PERMUTES_QK[arch] else {}
        names = _hf_names(arch, n_blocks)
        entries: dict[str, _Entry] = {}
        for index, tensor in enumerate(reader.tensors):
            base, suffix = _split_suffix(tensor.name)
            if base in _DERIVED:
                continue
            if base not in names:
                raise InputFormatError(
                    f"{self.path}: GGUF tensor {tensor.name} has no Hugging Face name for architecture {arch}; "
                    "merge from the Hugging Face safetensors checkpoint instead"
                )
            hf_base, kind = names[base]
            shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))
            info = TensorInfo(hf_base + suffix, shape, _result_dtype(tensor, self.path))
            entry = _Entry(tensor.name, index, info, heads.get(kind))
            self._check_heads(entry)
            entries[entry.info.name] = entry
        return entries

    def _check_heads(self, entry: _Entry) -> None:
        shape = entry.info.shape
        if entry.n_head is not None and (not shape or shape[0] % (2 * entry.n_head)):   # a 0-d q/k has no rows
            raise InputFormatError(
                f"{self.path}: tensor {entry.gguf_name} has {shape[0] if shape else 'no'} rows, not a multiple of "
                f"2 x {entry.n_head} heads; the GGUF head_count metadata does not match its tensors, re-export the file"
            )

    def keys(self) -> list[str]:
        return list(self._entries)

    def info(self, name: str) -> TensorInfo:
        return self._entry(name).info

    def get(self, name: str) -> torch.Tensor:
        entry = self._entry(name)
        if self._reader is None:  # reopened after close(), like SafetensorsReader's handles
            self._reader = _open(self.path)
        tensor = self._load(self._reader.tensors[entry.index], entry.info)
        if entry.n_head is not None:
            tensor = _unpermute_rows(tensor, entry.n_head)
        return tensor

    def _load(self, stored: gguf.ReaderTensor, info: TensorInfo) -> torch.Tensor:
        qtype = stored.tensor_type
        if qtype == gguf.GGMLQuantizationType.BF16:
            # numpy has no bfloat16: the reader hands out raw bytes, reinterpreted here.
            raw = torch.from_numpy(np.array(stored.data).view(np.int16))
            return raw.view(torch.bfloat16).reshape(info.shape)
        if qtype in _PLAIN:
            return torch.from_numpy(np.array(stored.data)).reshape(info.shape)
        try:
            values = gguf.quants.dequantize(stored.data, qtype)
        except NotImplementedError:
            raise InputFormatError(
                f"{self.path}: tensor {stored.name} is quantised as {qtype.name}, which the installed gguf "
                "package cannot dequantise; upgrade gguf or re-export the file as Q8_0/F16"
            ) from None
        return torch.from_numpy(values).reshape(info.shape)

    def _entry(self, name: str) -> _Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise MissingTensorError(
                f"{self.path}: no tensor {name}; the GGUF holds {len(self._entries)} tensors under "
                "Hugging Face names (see `mergesmith inspect`)"
            ) from None

    def close(self) -> None:
        self._reader = None  # drops the memory map; get() reopens on demand


def _unpermute_rows(tensor: torch.Tensor, n_head: int) -> torch.Tensor:
    """Inverse of llama.cpp's q/k permutation: W = W_gguf.reshape(h, r, 2, ...).swapaxes(1, 2)."""
    rows = tensor.shape[0]
    split = tensor.reshape(n_head, rows // n_head // 2, 2, *tensor.shape[1:])
    return split.transpose(1, 2).reshape(tensor.shape)


def _transformers(path: Path) -> Any:
    try:
        import transformers
    except ImportError as exc:
        raise InputFormatError(
            f"{path}: reading a GGUF config or tokenizer needs transformers ({exc}); pip install mergesmith[hf]"
        ) from exc
    return transformers


def gguf_hf_config(path: Path | str) -> dict:
    """The ``config.json`` of the Hugging Face model the GGUF was converted from."""
    path = Path(path)
    reader = _open(path)
    arch = _architecture(reader, path)
    n_blocks = _positive_int(reader, gguf.Keys.LLM.BLOCK_COUNT.format(arch=arch), path)
    transformers = _transformers(path)
    try:
        config = transformers.AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name).to_dict()
    except _GGUF_PY_ERRORS as exc:   # transformers parses the file with gguf-py too
        raise InputFormatError(f"{path}: transformers cannot build a config from this GGUF ({exc})") from exc
    # "_name_or_path" and friends are local load paths, not model facts.
    config = {key: value for key, value in config.items() if not key.startswith("_")}
    model_type = config.get("model_type")
    if model_type not in _HF_ARCHITECTURES:
        raise ArchitectureError(
            f"{path}: transformers reads this GGUF as model_type {model_type!r}; mergesmith supports "
            f"{sorted(_HF_ARCHITECTURES)}. Merge from the Hugging Face checkpoint instead."
        )
    # transformers leaves "architectures" empty for GGUF; the block count is the file's own.
    config["architectures"] = [_HF_ARCHITECTURES[model_type]]
    config["num_hidden_layers"] = n_blocks
    rope = config.get("rope_parameters") or {}
    if "rope_theta" not in config and "rope_theta" in rope:
        # transformers 5 nests rope_theta; 4.x and mergekit read it at the top level.
        config["rope_theta"] = rope["rope_theta"]
    return config


def gguf_generation_config(path: Path | str) -> dict | None:
    """``generation_config.json`` token ids from the GGUF tokenizer metadata, or None if absent."""
    path = Path(path)
    reader = _open(path)
    ids = {
        "bos_token_id": reader.get_field(gguf.Keys.Tokenizer.BOS_ID),
        "eos_token_id": reader.get_field(gguf.Keys.Tokenizer.EOS_ID),
    }
    found = {key: _contents(field, path) for key, field in ids.items() if field is not None}
    return found or None


def save_gguf_tokenizer(path: Path | str, dest_dir: Path | str) -> None:
    """Write the GGUF's tokenizer as Hugging Face files (tokenizer.json, tokenizer_config.json)."""
    path = Path(path)
    _architecture(_open(path), path)
    transformers = _transformers(path)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except _GGUF_PY_ERRORS as exc:
        raise InputFormatError(f"{path}: transformers cannot build a tokenizer from this GGUF ({exc})") from exc
    # The chat template goes into tokenizer_config.json (not chat_template.jinja) because
    # transformers < 4.50 and llama.cpp's converter only look for it there.
    tokenizer.save_pretrained(str(dest_dir), save_jinja_files=False)
