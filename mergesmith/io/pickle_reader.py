"""Pickle ``.bin`` checkpoints, read only when the user allows it (``--allow-pickle``).

``torch.load(mmap=True, weights_only=True)`` maps the file instead of reading it, so one
shard's tensors are not all resident at once; still, pickle is not a safe format.
"""

from __future__ import annotations

import json
from pathlib import Path

from mergesmith._torch import torch
from mergesmith.errors import InputFormatError, MissingTensorError
from mergesmith.io.reader import TensorInfo

BIN_INDEX = "pytorch_model.bin.index.json"


class PickleReader:
    def __init__(self, path: Path, shard_of: dict[str, Path]):
        self.path = path
        self._shard_of = shard_of
        self._loaded: dict[Path, dict] = {}
        self._infos = {}
        for shard in sorted(set(shard_of.values())):
            for name, tensor in self._load(shard).items():
                if shard_of.get(name) == shard:
                    self._infos[name] = TensorInfo(name, tuple(tensor.shape), tensor.dtype)

    @classmethod
    def open_dir(cls, path: Path) -> PickleReader:
        index = path / BIN_INDEX
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            return cls(path, {name: path / shard for name, shard in weight_map.items()})
        bins = sorted(path.glob("*.bin"))
        if len(bins) != 1:
            raise InputFormatError(f"{path}: several .bin files but no {BIN_INDEX}")
        names = torch.load(bins[0], map_location="cpu", mmap=True, weights_only=True).keys()
        return cls(path, {name: bins[0] for name in names})

    def _load(self, shard: Path) -> dict:
        if shard not in self._loaded:
            try:
                self._loaded[shard] = torch.load(shard, map_location="cpu", mmap=True, weights_only=True)
            except Exception as exc:  # torch raises many types for a bad pickle; report the file.
                raise InputFormatError(f"{shard}: cannot read pickle checkpoint ({exc})") from exc
        return self._loaded[shard]

    def keys(self) -> list[str]:
        return list(self._infos)

    def info(self, name: str) -> TensorInfo:
        if name not in self._infos:
            raise MissingTensorError(f"{self.path}: no tensor {name}")
        return self._infos[name]

    def get(self, name: str) -> torch.Tensor:
        return self._load(self._shard_of[self.info(name).name])[name]

    def close(self) -> None:
        self._loaded.clear()
