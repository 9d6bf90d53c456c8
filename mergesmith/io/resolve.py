"""Recipe model references → opened inputs: a tensor reader, config.json, where tokenizer files are.

A reference is a local directory (safetensors, single or sharded; pickle ``.bin`` only with
``allow_pickle``), a ``.gguf`` file (or a directory holding exactly one), or a Hub id
``org/name[@revision]`` (io/hub.py); ``base+adapter`` folds a PEFT LoRA adapter into its base
first (io/lora.py). Relative paths are looked up from the working directory, then the recipe's.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mergesmith.config.references import ModelPath, parse_reference
from mergesmith.errors import InputFormatError
from mergesmith.io.hub import looks_like_hub_id, snapshot_dir
from mergesmith.io.pickle_reader import PickleReader
from mergesmith.io.reader import SafetensorsReader, TensorInfo, TensorReader


@dataclass(frozen=True)
class ModelInput:
    """One opened input model. ``tensors`` is header metadata only."""

    key: str                       # the reference as written in the recipe
    path: Path
    config: Mapping
    tensors: Mapping[str, TensorInfo]
    reader: TensorReader
    gguf_file: Path | None = None


def _locate(key: str, part: ModelPath, base_dir: Path | None, allow_pickle: bool = False) -> Path:
    """``part`` (one side of ``key``) as a local path, else as a Hub id, else an error."""
    candidates = [Path(part.path).expanduser()]
    if base_dir is not None and not candidates[0].is_absolute():
        candidates.append(base_dir / candidates[0])
    for candidate in candidates:
        if candidate.exists():
            if part.revision:
                raise InputFormatError(f"model '{key}': {candidate} is a local path, so '@{part.revision}' (a Hub "
                                       "revision) does not apply; remove it or check out that revision there")
            return candidate.resolve()
    if looks_like_hub_id(part.path):
        return snapshot_dir(key, part.path, part.revision, looked_in=candidates, allow_pickle=allow_pickle)
    who = f"model '{key}'" if key == str(part) else f"model '{key}': '{part}'"
    raise InputFormatError(
        f"{who} not found: no such file or directory (looked in {', '.join(str(c) for c in candidates)}); "
        "give a local model directory or .gguf file, or a Hugging Face Hub id org/name"
    )


def local_paths(key: str, base_dir: Path | None = None) -> list[Path]:
    """The local files and directories a reference reads (symlinks resolved), found without opening
    anything; Hub ids are left out (their snapshots are known once opened)."""
    try:
        ref = parse_reference(key)
    except ValueError:
        return []   # open_model reports it
    found = []
    for part in (ref.model, ref.lora):
        if part is None:
            continue
        candidates = [Path(part.path).expanduser()]
        if base_dir is not None and not candidates[0].is_absolute():
            candidates.append(base_dir / candidates[0])
        found += [c.resolve() for c in candidates if c.exists()][:1]   # the one _locate picks
    return found


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


def open_model(
    key: str, *, base_dir: Path | None = None, allow_pickle: bool = False, lora_cache: Path | None = None,
) -> ModelInput:
    """Open one reference; ``base+adapter`` is merged into ``lora_cache`` (on the fly when None)."""
    try:
        ref = parse_reference(key)
    except ValueError as exc:
        raise InputFormatError(f"model reference {exc}") from None
    base = _open_path(key, _locate(key, ref.model, base_dir, allow_pickle), allow_pickle)
    if ref.lora is None:
        return base
    from mergesmith.io.lora import cached_merge, lora_view

    try:
        adapter_dir = _locate(key, ref.lora, base_dir, allow_pickle)
        view = lora_view(key, base, adapter_dir)
    except BaseException:
        base.reader.close()
        raise
    if lora_cache is None:
        return view
    try:
        merged = cached_merge(view, adapter_dir, Path(lora_cache))
    finally:
        view.reader.close()
    return _open_hf_dir(key, merged, allow_pickle=False)


def _open_path(key: str, path: Path, allow_pickle: bool) -> ModelInput:
    if path.is_file():
        if path.suffix != ".gguf":
            raise InputFormatError(f"model '{key}': {path} is a file but not .gguf; give the model directory")
        return _open_gguf(key, path)
    ggufs = sorted(path.glob("*.gguf"))
    if not (path / "config.json").is_file() and len(ggufs) == 1:
        return _open_gguf(key, ggufs[0])
    return _open_hf_dir(key, path, allow_pickle)


def open_models(
    keys, *, base_dir: Path | None = None, allow_pickle: bool = False, lora_cache: Path | None = None,
) -> dict[str, ModelInput]:
    opened: dict[str, ModelInput] = {}
    try:
        for key in keys:
            opened[key] = open_model(key, base_dir=base_dir, allow_pickle=allow_pickle, lora_cache=lora_cache)
    except BaseException:
        close_models(opened)
        raise
    return opened


def close_models(models: Mapping[str, ModelInput]) -> None:
    for model in models.values():
        model.reader.close()
