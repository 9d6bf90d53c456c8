"""Recipe model references → opened inputs: a tensor reader, config.json, where tokenizer files are.

A reference is a local directory (safetensors, single or sharded; pickle ``.bin`` only with
``allow_pickle``) or a ``.gguf`` file (or a directory holding exactly one).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

from mergesmith.errors import InputFormatError
from mergesmith.io.reader import SafetensorsReader, TensorInfo, TensorReader
from mergesmith.io.pickle_reader import PickleReader


@dataclass(frozen=True)
class ModelInput:
    """One opened input model. ``tensors`` is header metadata only."""

    key: str                       # the reference as written in the recipe
    path: Path
    config: Mapping
    tensors: Mapping[str, TensorInfo]
    reader: TensorReader
    gguf_file: Optional[Path] = None


def _locate(key: str, base_dir: Optional[Path]) -> Path:
    candidates = [Path(key).expanduser()]
    if base_dir is not None and not Path(key).is_absolute():
        candidates.append(base_dir / key)
    for candidate in candidates:
        if candidate.exists():
            return candidate.resolve()
    raise InputFormatError(
        f"model '{key}' not found: no such file or directory (looked in {', '.join(str(c) for c in candidates)}); "
        "give a local model directory or .gguf file (hub downloads are not available offline)"
    )


def _read_config(path: Path, key: str) -> dict:
    config_path = path / "config.json"
    if not config_path.is_file():
        raise InputFormatError(f"model '{key}': {config_path} is missing; a model directory needs its config.json")
    try:
        return json.loads(config_path.read_text())
    except ValueError as exc:
        raise InputFormatError(f"{config_path}: not valid JSON ({exc})") from None


def _open_gguf(key: str, file: Path) -> ModelInput:
    from mergesmith.io.gguf import GGUFTensorReader, gguf_hf_config

    reader = GGUFTensorReader(file)
    infos = {name: reader.info(name) for name in reader.keys()}
    return ModelInput(key, file, gguf_hf_config(file), infos, reader, gguf_file=file)


def _open_hf_dir(key: str, path: Path, allow_pickle: bool) -> ModelInput:
    config = _read_config(path, key)
    if any(path.glob("*.safetensors")):
        reader: TensorReader = SafetensorsReader.open_dir(path)
    elif any(path.glob("*.bin")):
        if not allow_pickle:
            raise InputFormatError(
                f"model '{key}': {path} holds only pickle .bin checkpoints, which can run code when loaded; "
                "convert them to safetensors or pass --allow-pickle if you trust the source"
            )
        reader = PickleReader.open_dir(path)
    else:
        raise InputFormatError(f"model '{key}': {path} has no .safetensors, .bin or .gguf weights")
    return ModelInput(key, path, config, {n: reader.info(n) for n in reader.keys()}, reader)


def open_model(key: str, *, base_dir: Optional[Path] = None, allow_pickle: bool = False) -> ModelInput:
    path = _locate(key, base_dir)
    if path.is_file():
        if path.suffix != ".gguf":
            raise InputFormatError(f"model '{key}': {path} is a file but not .gguf; give the model directory")
        return _open_gguf(key, path)
    ggufs = sorted(path.glob("*.gguf"))
    if not (path / "config.json").is_file() and len(ggufs) == 1:
        return _open_gguf(key, ggufs[0])
    return _open_hf_dir(key, path, allow_pickle)


def open_models(keys, *, base_dir: Optional[Path] = None, allow_pickle: bool = False) -> dict[str, ModelInput]:
    opened: dict[str, ModelInput] = {}
    try:
        for key in keys:
            opened[key] = open_model(key, base_dir=base_dir, allow_pickle=allow_pickle)
    except BaseException:
        close_models(opened)
        raise
    return opened


def close_models(models: Mapping[str, ModelInput]) -> None:
    for model in models.values():
        model.reader.close()
