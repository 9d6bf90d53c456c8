"""Pickle ``.bin`` checkpoints, read only when the user allows it (``--allow-pickle``).

``torch.load(mmap=True, weights_only=True)`` maps the file instead of reading it, so one
shard's tensors are not all resident at once; still, pickle is not a safe format. A file whose
pickle names anything but tensor types is refused with the global it asked for; shards named by
the index must lie inside the model directory, as for safetensors.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

from mergesmith._torch import torch
from mergesmith.errors import InputFormatError, MissingTensorError
from mergesmith.io.model_files import read_index, require_inside
from mergesmith.io.reader import TensorInfo

BIN_INDEX = "pytorch_model.bin.index.json"
CONVERT = "convert the checkpoint to safetensors from a trusted environment"
# How torch's weights-only unpickler names a global it refuses (torch 2.4 to 2.13 wordings).
_REFUSED_GLOBAL = re.compile(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) (\S+)")


class PickleReader:
    def __init__(self, path: Path, shard_of: dict[str, Path], loaded: dict[Path, dict] | None = None):
        self.path = path
        self._shard_of = shard_of
        self._loaded: dict[Path, dict] = dict(loaded or {})
        self._infos = {}
        held: dict[str, Path] = {}  # every tensor any shard holds -> that shard
        for shard in sorted(set(shard_of.values())):
            for name, tensor in self._load(shard).items():
                if name in held:
                    raise InputFormatError(
                        f"{path}: tensor {name!r:.200} is stored twice, in {held[name]} and in "
                        f"{shard}; which copy is meant is ambiguous, re-download the model"
                    )
                held[name] = shard
                if shard_of.get(name) == shard:
                    self._infos[name] = TensorInfo(name, tuple(tensor.shape), tensor.dtype)

    @classmethod
    def open_dir(cls, path: Path) -> PickleReader:
        index = path / BIN_INDEX
        if index.is_file():
            shard_of = read_index(path, index)
            for shard in sorted(set(shard_of.values())):
                if not shard.is_file():
                    raise InputFormatError(f"{index}: shard {shard.name} is missing; re-download the model")
            return cls(path, shard_of)
        bins = sorted(path.glob("*.bin"))
        if len(bins) != 1:
            raise InputFormatError(f"{path}: {len(bins)} .bin files but no {BIN_INDEX}; re-download the model")
        loaded = load_state_dict(require_inside(path, bins[0]))
        return cls(path, {name: bins[0] for name in loaded}, {bins[0]: loaded})

    def _load(self, shard: Path) -> dict:
        if shard not in self._loaded:
            self._loaded[shard] = load_state_dict(shard)
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


def load_state_dict(shard: Path) -> dict[str, torch.Tensor]:
    """One pickle file as name -> tensor; anything else in it is an error naming the file."""
    try:
        loaded = torch.load(shard, map_location="cpu", mmap=True, weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = _REFUSED_GLOBAL.search(str(exc))
        if refused:
            raise InputFormatError(
                f"{shard}: the pickle needs the global {refused.group(1).rstrip('.')!r}, which "
                f"is not a tensor type; {CONVERT}"
            ) from None
        raise InputFormatError(f"{shard}: cannot read pickle checkpoint ({_one_line(exc)}); {CONVERT}") from None
    except Exception as exc:  # torch raises many types for a bad file (zip, EOF, runtime); report the file.
        raise InputFormatError(f"{shard}: cannot read pickle checkpoint ({_one_line(exc)}); {CONVERT}") from None
    if not isinstance(loaded, dict):
        raise InputFormatError(
            f"{shard}: holds a {type(loaded).__name__}, not a state dict of named tensors; {CONVERT}"
        )
    for name, value in loaded.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise InputFormatError(
                f"{shard}: entry {name!r:.200} holds a value of type {type(value).__name__}, "
                f"not a tensor; the file is not a plain state dict, {CONVERT}"
            )
    return loaded


def _one_line(exc: Exception) -> str:
    # torch's messages run over several lines of advice (with terminal escapes); the CLI prints
    # one line, so keep the line that says what failed.
    text = str(exc)
    reason = re.search(r"WeightsUnpickler error: (.*)", text)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (reason.group(1) if reason else lines[0] if lines else type(exc).__name__)[:300]
