"""Streaming sharded safetensors writer.

The plan knows every output tensor's name, shape and dtype before any arithmetic, so each
shard's header is written first and every tensor goes straight to its byte offset: nothing
is buffered beyond the tensor being written. The index is written last, by ``finish()``.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mergesmith._torch import torch
from mergesmith.errors import ConfigError, MergesmithError
from mergesmith.io.blockfile import AlignedBuffer, BlockFile
from mergesmith.io.reader import ITEMSIZE

# safetensors dtype codes by torch dtype name (names: importing this module needs no torch).
ST_CODES = {
    "float64": "F64",
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint8": "U8",
    "bool": "BOOL",
}
INDEX_NAME = "model.safetensors.index.json"
# More shards than this is almost always a shard size given in the wrong unit.
MANY_SHARDS = 100
_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_size(text: str) -> int:
    """``5GB``, ``500MiB``, ``1000000B`` → bytes. The unit is required: a bare ``5`` would be five
    bytes, one shard per tensor, where 5GB was surely meant."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not match or match.group(2).lower() not in _UNITS:
        raise ConfigError(f"shard_size '{text}' is not a size; write e.g. 5GB, 500MiB or 1000000B")
    if not match.group(2):
        n = match.group(1)
        raise ConfigError(
            f"shard_size '{text}' (--shard-size) has no unit, so it would be {n} bytes; "
            f"add the unit: {n}GB, {n}MB, or {n}B if bytes are meant"
        )
    size = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if size <= 0:
        raise ConfigError(f"shard_size '{text}' must be positive")
    return size


def dtype_name(dtype) -> str:
    """``bfloat16`` for torch.bfloat16 or ``"bfloat16"``: slots may name their dtype, so that a
    writer of bytes as read never imports torch."""
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class TensorSlot:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype | str

    @property
    def itemsize(self) -> int:
        return ITEMSIZE[dtype_name(self.dtype)]

    @property
    def nbytes(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count * self.itemsize


def _split(slots: Sequence[TensorSlot], shard_size: int) -> list[list[TensorSlot]]:
    shards: list[list[TensorSlot]] = [[]]
    used = 0
    for slot in slots:
        if shards[-1] and used + slot.nbytes > shard_size:
            shards.append([])
            used = 0
        shards[-1].append(slot)
        used += slot.nbytes
    return shards


def _header(slots: Sequence[TensorSlot]) -> tuple[bytes, dict[str, tuple[int, int]]]:
    entries, spans, offset = {"__metadata__": {"format": "pt"}}, {}, 0
    for slot in slots:
        spans[slot.name] = (offset, offset + slot.nbytes)
        entries[slot.name] = {
            "dtype": ST_CODES[dtype_name(slot.dtype)],
            "shape": list(slot.shape),
            "data_offsets": list(spans[slot.name]),
        }
        offset += slot.nbytes
    raw = json.dumps(entries, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # data must start 8-byte aligned
    return len(raw).to_bytes(8, "little") + raw, spans


class ShardedWriter:
    def __init__(self, directory: Path, slots: Sequence[TensorSlot], shard_size: int, direct: bool = True):
        """``direct``: write the shards with O_DIRECT where the filesystem allows (see blockfile.py)."""
        self.directory = directory
        shards = _split(slots, shard_size)
        count = len(shards)
        if count > MANY_SHARDS:
            warnings.warn(
                f"shard_size {shard_size} bytes splits the output into {count} shards; "
                "choose a larger shard size (e.g. 5GB) for fewer files",
                stacklevel=2,
            )
        self.files = [
            "model.safetensors" if count == 1 else f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)
        ]
        self._where: dict[str, tuple[int, int, TensorSlot]] = {}  # name -> (shard, offset, slot)
        self._shards: list[BlockFile] = []
        try:
            for shard_index, (file, shard) in enumerate(zip(self.files, shards)):
                header, spans = _header(shard)
                out = BlockFile(directory / file, len(header) + sum(s.nbytes for s in shard), direct)
                self._shards.append(out)
                view = AlignedBuffer(len(header)).at(0, len(header))
                view[:] = header
                out.write_view(0, view)
                for slot in shard:
                    self._where[slot.name] = (shard_index, len(header) + spans[slot.name][0], slot)
        except BaseException:
            self.close()
            raise
        self._pending = set(self._where)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        _, _, slot = self._where[name]
        if tuple(tensor.shape) != slot.shape:
            raise MergesmithError(f"internal: {name} computed as {tuple(tensor.shape)}, planned {slot.shape}")
        self.write_range(name, 0, tensor)
        self.complete(name)

    def write_range(self, name: str, start: int, tensor: torch.Tensor) -> None:
        """Put ``tensor``'s elements at flat element ``start`` of ``name`` (streamed jobs)."""
        shard_index, offset, slot = self._where[name]
        if dtype_name(tensor.dtype) != dtype_name(slot.dtype) or start + tensor.numel() > slot.nbytes // slot.itemsize:
            raise MergesmithError(
                f"internal: {name}[{start}:{start + tensor.numel()}] computed as {tensor.dtype}, planned {slot.shape} {slot.dtype}"
            )
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
        self._shards[shard_index].write(offset + start * slot.itemsize, data)

    def write_view(self, name: str, start: int, view: memoryview) -> None:
        """Put ``view``'s bytes at byte ``start`` of ``name``: bytes as read from an input of the
        slot's dtype, in a buffer from ``AlignedBuffer.at(offset_of(name) + start, ...)``."""
        shard_index, offset, slot = self._where[name]
        if start < 0 or start + len(view) > slot.nbytes:
            raise MergesmithError(f"internal: {name}: bytes [{start}:{start + len(view)}] outside {slot.nbytes}")
        self._shards[shard_index].write_view(offset + start, view)

    def offset_of(self, name: str) -> int:
        """The byte offset of ``name``'s data in its shard file (to place bytes for ``write_view``)."""
        return self._where[name][1]

    def complete(self, name: str) -> None:
        """Every element of ``name`` has been written."""
        self._pending.discard(name)

    def finish(self) -> list[str]:
        """Close the shards and write the index (sharded outputs only); every slot must be filled."""
        if self._pending:
            raise MergesmithError(
                f"internal: {len(self._pending)} planned tensors were never written, e.g. {min(self._pending)}"
            )
        self.close()
        if len(self.files) > 1:
            total = sum(slot.nbytes for _, _, slot in self._where.values())
            weight_map = {name: self.files[shard] for name, (shard, _, _) in self._where.items()}
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (self.directory / INDEX_NAME).write_text(json.dumps(index, indent=2))
        return list(self.files)

    def close(self) -> None:
        shards, self._shards = self._shards, []
        for shard in shards:
            shard.close()
