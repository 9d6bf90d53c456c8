"""Tensor readers: the safetensors-like surface every input format offers.

A reader has ``keys()``, ``info(name)`` (shape and dtype from the header, no tensor IO)
and ``get(name)`` (one tensor). Readers never hold more than the tensor asked for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from safetensors import safe_open

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
    try:
        with open(path, "rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            if size <= 0 or size > 100_000_000:
                raise InputFormatError(f"{path}: not a safetensors file (header length {size})")
            header = json.loads(fh.read(size))
    except (OSError, ValueError) as exc:
        raise InputFormatError(f"{path}: cannot read safetensors header ({exc})") from exc
    header.pop("__metadata__", None)
    return header


class SafetensorsReader:
    """Reads a model directory of one ``model.safetensors`` or index-described shards."""

    def __init__(self, path: Path, shard_of: dict[str, Path]):
        self.path = path
        self._shard_of = shard_of
        self._infos: dict[str, TensorInfo] = {}
        for shard in sorted(set(shard_of.values())):
            for name, entry in read_safetensors_header(shard).items():
                if shard_of.get(name) != shard:
                    continue
                dtype = _ST_DTYPES.get(entry["dtype"])
                if dtype is None:
                    raise InputFormatError(
                        f"{shard}: tensor {name} has dtype {entry['dtype']}, which mergesmith does not read"
                    )
                self._infos[name] = TensorInfo(name, tuple(entry["shape"]), dtype)
        missing = sorted(set(shard_of) - set(self._infos))
        if missing:
            raise InputFormatError(
                f"{path / SAFETENSORS_INDEX}: lists {missing[0]} but no shard holds it; re-download the model"
            )
        self._handles: dict[Path, object] = {}

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
        shard = self._shard_of.get(name)
        if shard is None:
            raise MissingTensorError(f"{self.path}: no tensor {name}")
        handle = self._handles.get(shard)
        if handle is None:
            handle = safe_open(str(shard), framework="pt")
            self._handles[shard] = handle
        return handle.get_tensor(name)

    def close(self) -> None:
        self._handles.clear()
