"""Tensor readers: the safetensors-like surface every input format offers.

A reader has ``keys()``, ``info(name)`` (shape and dtype from the header, no tensor IO)
and ``get(name)`` (one tensor). Readers never hold more than the tensor asked for.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from mergesmith.errors import InputFormatError, MissingTensorError

SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_SINGLE = "model.safetensors"

# safetensors header dtype codes -> torch dtypes (the subset checkpoints use).
_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
    "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32,
    "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype


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

    Tensors are read with ``pread`` into freshly allocated tensors rather than through a
    memory map: pages of a mapped file count towards the process's resident memory once
    touched, so mapping two 7B inputs would make the RSS grow with model size.
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
        # Opened once, up front: worker threads then only pread, which is safe to share.
        self._fds = {shard: os.open(shard, os.O_RDONLY) for shard in sorted(set(shard_of.values()))}

    @classmethod
    def open_dir(cls, path: Path) -> "SafetensorsReader":
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
        shard, offset, count = self._spans[name]
        out = torch.empty(info.shape, dtype=info.dtype)
        if count != out.numel() * out.element_size():
            raise InputFormatError(f"{shard}: tensor {name} has {count} bytes for shape {list(info.shape)} {info.dtype}")
        view = memoryview(out.reshape(-1).view(torch.uint8).numpy()) if count else memoryview(b"")
        done = 0
        while done < count:
            got = os.preadv(self._fds[shard], [view[done:]], offset + done)
            if got <= 0:
                raise InputFormatError(f"{shard}: file ends inside tensor {name}; re-download the model")
            done += got
        return out

    def close(self) -> None:
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)
