"""GGUF checkpoints as merge inputs, read under their Hugging Face tensor names.

llama.cpp's HF→GGUF converter renames tensors (``model.layers.3.self_attn.q_proj.weight``
→ ``blk.3.attn_q.weight``), stores dimensions in reverse order, quantises, and for
llama-family attention reorders the rows of q (n_head) and k (n_head_kv) so that the two
rotary halves of every head interleave:

    W_gguf = W.reshape(n_head, 2, rows // n_head // 2, cols).swapaxes(1, 2).reshape(rows, cols)

``GGUFTensorReader`` undoes all of this one tensor per ``get()``, reading only that tensor's
bytes. Opening one reads the header once (io/gguf_meta.py), without touching tensor data,
numpy or torch: planning a GGUF merge costs about what planning a safetensors one does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergesmith._torch import torch
from mergesmith.errors import InputFormatError, MissingTensorError
from mergesmith.io.gguf_config import generation_config, hf_config
from mergesmith.io.gguf_layout import TensorSpan, read_tensor_bytes
from mergesmith.io.gguf_meta import PERMUTES_QK, GGUFMeta, gguf
from mergesmith.io.reader import TensorInfo

# Tensors the converter derives from the config (rope scaling); transformers recomputes them.
_DERIVED = {gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS]}

# Stored types that keep their dtype: ggml type -> (numpy code of the stored bits, torch dtype
# name). numpy has no bfloat16, so BF16 travels as int16 bits and is reinterpreted in torch.
# Every block-quantised type dequantises to float32. Names, not torch dtypes: planning reads
# TensorInfo and must not import torch.
_PLAIN = {
    gguf.GGMLQuantizationType.F32: ("f4", "float32"),
    gguf.GGMLQuantizationType.F16: ("f2", "float16"),
    gguf.GGMLQuantizationType.BF16: ("i2", "bfloat16"),
}


@dataclass(frozen=True)
class _Entry:
    span: TensorSpan
    info: TensorInfo
    n_head: int | None  # head count to un-permute rows with, None when not permuted


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


def _dtype_name(span: TensorSpan, path: Path) -> str:
    qtype = gguf.GGMLQuantizationType(span.ggml_type)
    if qtype in _PLAIN:
        return _PLAIN[qtype][1]
    block_size, _ = gguf.GGML_QUANT_SIZES[qtype]
    if block_size > 1:
        return "float32"
    raise InputFormatError(
        f"{path}: tensor {span.name} is stored as {qtype.name}, which is not a model weight type; "
        "re-export the GGUF with llama.cpp"
    )


class GGUFTensorReader:
    """One .gguf file as a ``TensorReader`` with Hugging Face names, shapes and row order.

    ``meta`` is the file's one parse; hand it on (``gguf_hf_config(reader.meta)``) instead of a path.
    """

    def __init__(self, source: Path | str | GGUFMeta):
        self.meta = _meta(source)
        self.path = self.meta.path
        self._entries = self._index()

    def _index(self) -> dict[str, _Entry]:
        meta, spans = self.meta, self.meta.tensors
        arch = meta.architecture()
        n_blocks = meta.integer(gguf.Keys.LLM.BLOCK_COUNT.format(arch=arch), required=True)
        if n_blocks > len(spans):  # gguf-py's name table below is built per block
            raise InputFormatError(
                f"{self.path}: GGUF metadata says {n_blocks} blocks but the file has only "
                f"{len(spans)} tensors; the metadata does not match, re-export the file"
            )
        n_head = meta.integer(gguf.Keys.Attention.HEAD_COUNT.format(arch=arch), required=True)
        # No head_count_kv means multi-head attention: as many kv heads as query heads.
        n_head_kv = meta.integer(gguf.Keys.Attention.HEAD_COUNT_KV.format(arch=arch), n_head)
        heads = {gguf.MODEL_TENSOR.ATTN_Q: n_head, gguf.MODEL_TENSOR.ATTN_K: n_head_kv} if PERMUTES_QK[arch] else {}
        names = _hf_names(arch, n_blocks)
        entries: dict[str, _Entry] = {}
        for span in spans:
            base, suffix = _split_suffix(span.name)
            if base in _DERIVED:
                continue
            if base not in names:
                raise InputFormatError(
                    f"{self.path}: GGUF tensor {span.name} has no Hugging Face name for architecture {arch}; "
                    "merge from the Hugging Face safetensors checkpoint instead"
                )
            hf_base, kind = names[base]
            info = TensorInfo(hf_base + suffix, tuple(reversed(span.dims)), _dtype_name(span, self.path))
            entry = _Entry(span, info, heads.get(kind))
            self._check_heads(entry)
            entries[entry.info.name] = entry
        return entries

    def _check_heads(self, entry: _Entry) -> None:
        shape = entry.info.shape
        if entry.n_head is not None and (not shape or shape[0] % (2 * entry.n_head)):  # a 0-d q/k has no rows
            raise InputFormatError(
                f"{self.path}: tensor {entry.span.name} has {shape[0] if shape else 'no'} rows, not a multiple of "
                f"2 x {entry.n_head} heads; the GGUF head_count metadata does not match its tensors, re-export the file"
            )

    def keys(self) -> list[str]:
        return list(self._entries)

    def info(self, name: str) -> TensorInfo:
        return self._entry(name).info

    def get(self, name: str) -> torch.Tensor:
        entry = self._entry(name)
        tensor = self._load(entry.span, entry.info)
        if entry.n_head is not None:
            tensor = _unpermute_rows(tensor, entry.n_head)
        return tensor

    def _load(self, span: TensorSpan, info: TensorInfo) -> torch.Tensor:
        import numpy as np  # comes with gguf; imported here so a missing gguf gets gguf_meta's fix-it error

        if span.nbytes == 0:  # a dimension of 0: nothing to read or dequantise
            return torch.zeros(info.shape, dtype=info.dtype)
        raw = read_tensor_bytes(self.meta.layout, span)
        qtype = gguf.GGMLQuantizationType(span.ggml_type)
        if qtype in _PLAIN:
            code, _ = _PLAIN[qtype]
            stored = np.frombuffer(raw, dtype=np.dtype(code).newbyteorder(self.meta.layout.order))
            values = torch.from_numpy(stored.astype(code, copy=False))  # swaps bytes only in big-endian files
            return values.view(info.dtype).reshape(info.shape)
        block, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
        rows = np.frombuffer(raw, dtype=np.uint8).reshape(-1, span.dims[0] // block * block_bytes)
        try:
            values = gguf.quants.dequantize(rows, qtype)
        except NotImplementedError:
            raise InputFormatError(
                f"{self.path}: tensor {span.name} is quantised as {qtype.name}, which the installed gguf "
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
        """Nothing to release: each ``get()`` opens the file for the length of one read."""


def _unpermute_rows(tensor: torch.Tensor, n_head: int) -> torch.Tensor:
    """Inverse of llama.cpp's q/k permutation: W = W_gguf.reshape(h, r, 2, ...).swapaxes(1, 2)."""
    rows = tensor.shape[0]
    split = tensor.reshape(n_head, rows // n_head // 2, 2, *tensor.shape[1:])
    return split.transpose(1, 2).reshape(tensor.shape)


def _meta(source: Path | str | GGUFMeta) -> GGUFMeta:
    return source if isinstance(source, GGUFMeta) else GGUFMeta.read(source)


def gguf_hf_config(source: Path | str | GGUFMeta) -> dict:
    """The ``config.json`` of the Hugging Face model the GGUF was converted from.

    Pass the reader's ``meta`` where there is one: a path is parsed again.
    """
    return hf_config(_meta(source))


def gguf_generation_config(source: Path | str | GGUFMeta) -> dict | None:
    """``generation_config.json`` token ids from the GGUF tokenizer metadata, or None if absent."""
    return generation_config(_meta(source))


# What transformers' GGUF tokenizer loader raises on metadata it cannot use (it parses the file
# with gguf-py or its own reader). check_layout has refused malformed headers by then; this is the
# second line of defence, kept narrow so that our own bugs still surface.
_TRANSFORMERS_ERRORS = (OSError, ValueError, KeyError, IndexError, TypeError, OverflowError, MemoryError)


def _transformers(path: Path) -> Any:
    try:
        import transformers
    except ImportError as exc:
        raise InputFormatError(
            f"{path}: reading a GGUF tokenizer needs transformers ({exc}); pip install mergesmith[hf]"
        ) from exc
    return transformers


def save_gguf_tokenizer(source: Path | str | GGUFMeta, dest_dir: Path | str) -> None:
    """Write the GGUF's tokenizer as Hugging Face files (tokenizer.json, tokenizer_config.json).

    Merge time only (planning never needs it): transformers builds the tokenizer from the
    vocabulary and merges, which it reads from the file itself.
    """
    meta = _meta(source)
    meta.architecture()
    path = meta.path
    transformers = _transformers(path)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except _TRANSFORMERS_ERRORS as exc:
        raise InputFormatError(f"{path}: transformers cannot build a tokenizer from this GGUF ({exc})") from exc
    # The chat template goes into tokenizer_config.json (not chat_template.jinja) because
    # transformers < 4.50 and llama.cpp's converter only look for it there.
    tokenizer.save_pretrained(str(dest_dir), save_jinja_files=False)
