"""Tensor readers: the safetensors-like surface every input format offers.

A reader has ``keys()``, ``info(name)`` (shape and dtype from the header, no tensor IO)
and ``get(name)`` (one tensor). Readers never hold more than the tensor asked for.
"""

from __future__ import annotations

import json
import mmap
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from mergesmith._torch import torch
from mergesmith.errors import InputFormatError, MissingTensorError

SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_SINGLE = "model.safetensors"

# safetensors header dtype codes -> torch dtypes (the subset checkpoints use).
_ITEMSIZE = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4, "int16": 2,
             "int8": 1, "uint8": 1, "bool": 1}
_ST_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
    "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
}


@dataclass(frozen=True)
class TensorInfo:
    """Header facts of one tensor. The dtype is kept by name (``bfloat16``) so that planning,
    which only reads headers, never imports torch; ``dtype`` gives the torch dtype."""

    name: str
    shape: tuple[int, ...]
    dtype_name: str

    def __post_init__(self):
        if not isinstance(self.dtype_name, str):   # readers may pass a torch dtype
            object.__setattr__(self, "dtype_name", str(self.dtype_name).removeprefix("torch."))

    @property
    def dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype_name)

    @property
    def itemsize(self) -> int:
        return _ITEMSIZE[self.dtype_name]


class TensorReader(Protocol):
    """What the planner and the runner need from an input checkpoint."""

    path: Path

    def keys(self) -> list[str]: ...

    def info(self, name: str) -> TensorInfo: ...

    def get(self, name: str) -> torch.Tensor: ...

    def close(self) -> None: ...


def read_safetensors_header(path: Path) -> dict:
    """The JSON header of one safetensors file (8-byte little-endian length, then JSON)."""
    return _header_and_start(path)[1]


def _header_and_start(path: Path) -> tuple[int, dict]:
    """Byte offset where tensor data begins, and the header's tensor entries."""
    try:
        with open(path, "rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            if size <= 0 or size > 100_000_000:
                raise InputFormatError(f"{path}: not a safetensors file (header length {size})")
            header = json.loads(fh.read(size))
    except (OSError, ValueError) as exc:
        raise InputFormatError(f"{path}: cannot read safetensors header ({exc})") from exc
    header.pop("__metadata__", None)
    return 8 + size, header


class SafetensorsReader:
    """Reads a model directory of one ``model.safetensors`` or index-described shards.

    Each tensor (or element range, ``get_range``) is its own private memory map of just its
    bytes, unmapped when the tensor is freed. Mapping avoids a copy and the page faults of a
    freshly allocated buffer (together ~0.6 s per GB here, more than the merge arithmetic of a
    slerp); mapping per tensor rather than per file keeps the resident set bounded by what is in
    use: pages of a mapped file count towards it while the mapping lives.
    """

    def __init__(self, path: Path, shard_of: dict[str, Path]):
        self.path = path
        self._infos: dict[str, TensorInfo] = {}
        self._spans: dict[str, tuple[Path, int, int]] = {}   # name -> (shard, byte offset, byte count)
        for shard in sorted(set(shard_of.values())):
            data_start, header = _header_and_start(shard)
            for name, entry in header.items():
                if shard_of.get(name) != shard:
                    continue
                dtype = _ST_DTYPES.get(entry["dtype"])
                if dtype is None:
                    raise InputFormatError(
                        f"{shard}: tensor {name} has dtype {entry['dtype']}, which mergesmith does not read"
                    )
                begin, end = entry["data_offsets"]
                self._infos[name] = TensorInfo(name, tuple(entry["shape"]), dtype)
                self._spans[name] = (shard, data_start + begin, end - begin)
        missing = sorted(set(shard_of) - set(self._infos))
        if missing:
            raise InputFormatError(
                f"{path / SAFETENSORS_INDEX}: lists {missing[0]} but no shard holds it; re-download the model"
            )
        # Opened once, up front: worker threads then only map, which is safe to share.
        self._fds = {shard: os.open(shard, os.O_RDONLY) for shard in sorted(set(shard_of.values()))}
        sizes = {shard: os.fstat(fd).st_size for shard, fd in self._fds.items()}
        for name, (shard, offset, count) in self._spans.items():
            if offset + count > sizes[shard]:
                self.close()   # a map past the end of the file would crash (SIGBUS) on first touch
                raise InputFormatError(f"{shard}: file ends inside tensor {name}; re-download the model")

    @classmethod
    def open_dir(cls, path: Path) -> SafetensorsReader:
        index = path / SAFETENSORS_INDEX
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError) as exc:
                raise InputFormatError(f"{index}: not a safetensors index ({exc})") from exc
            shard_of = {name: path / shard for name, shard in weight_map.items()}
            for shard in set(shard_of.values()):
                if not shard.is_file():
                    raise InputFormatError(f"{index}: shard {shard.name} is missing; re-download the model")
            return cls(path, shard_of)
        single = path / SAFETENSORS_SINGLE
        if not single.is_file():
            shards = sorted(path.glob("*.safetensors"))
            if len(shards) != 1:
                raise InputFormatError(f"{path}: no {SAFETENSORS_SINGLE} and no {SAFETENSORS_INDEX}")
            single = shards[0]
        names = read_safetensors_header(single).keys()
        return cls(path, {name: single for name in names})

    def keys(self) -> list[str]:
        return list(self._infos)

    def info(self, name: str) -> TensorInfo:
        try:
            return self._infos[name]
        except KeyError:
            raise MissingTensorError(f"{self.path}: no tensor {name}") from None

    def get(self, name: str) -> torch.Tensor:
        info = self.info(name)
        shard, _, count = self._spans[name]
        numel = 1
        for dim in info.shape:
            numel *= dim
        if count != numel * info.itemsize:
            raise InputFormatError(f"{shard}: tensor {name} has {count} bytes for shape {list(info.shape)} {info.dtype}")
        return self.get_range(name, 0, numel).reshape(info.shape)

    def get_range(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Elements [start, stop) of the flattened tensor, without reading the rest."""
        info = self.info(name)
        shard, offset, _ = self._spans[name]
        size = info.itemsize
        begin, length = offset + start * size, (stop - start) * size
        if length <= 0:
            return torch.empty(0, dtype=info.dtype)
        aligned = begin - begin % mmap.ALLOCATIONGRANULARITY
        # ACCESS_COPY: a private, writable mapping: torch wants writable memory, and a write
        # (no method makes one) would touch a private copy, never the input file.
        view = mmap.mmap(self._fds[shard], begin - aligned + length, offset=aligned, access=mmap.ACCESS_COPY)
        return torch.frombuffer(view, dtype=info.dtype, count=stop - start, offset=begin - aligned)

    def read_range(self, name: str, start: int, stop: int, buffer: torch.Tensor) -> torch.Tensor:
        """Elements [start, stop) copied into ``buffer`` (uint8, reused by the caller): a view of it.

        For streaming: the copy lands in a buffer that is already in cache and in the page
        tables, which costs less than mapping the pages or faulting in a fresh allocation.
        """
        info = self.info(name)
        shard, offset, _ = self._spans[name]
        size = info.itemsize
        length = (stop - start) * size
        view, done, begin = memoryview(buffer[:length].numpy()), 0, offset + start * size
        while done < length:
            got = os.preadv(self._fds[shard], [view[done:]], begin + done)
            if got <= 0:
                raise InputFormatError(f"{shard}: file ends inside tensor {name}; re-download the model")
            done += got
        return buffer[:length].view(info.dtype)

    def close(self) -> None:
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)
