"""Recipe model references → what planning and execution read of each input.

``open_headers`` gives each model's ``ModelHeader`` (config.json, tensor headers, where the
tokenizer files are) and nothing more: local safetensors headers are read and their files closed,
a GGUF file's metadata is read, ``base+adapter`` is the base's header with the adapter checked
against it (nothing folded, hashed or written), and a Hub id fetches only its config, tokenizer
files and shard index, its tensor headers read over HTTP range requests (io/hub.py).
``open_models`` gives ``ModelInput``s, the same facts plus a live tensor reader, for execution:
Hub weights are downloaded and adapters folded (io/lora.py) only then.

A reference is a local directory (safetensors, single or sharded; pickle ``.bin`` only with
``allow_pickle``), a ``.gguf`` file (or a directory holding exactly one), or a Hub id
``org/name[@revision]``. Relative paths are looked up from the working directory, then the recipe's.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from mergesmith.config.references import ModelPath, Reference, parse_reference
from mergesmith.errors import InputFormatError
from mergesmith.io.header import ModelHeader, ModelInput
from mergesmith.io.hub import (
    cached_snapshot,
    header_files,
    looks_like_hub_id,
    remote_tensors,
    snapshot_dir,
)
from mergesmith.io.pickle_reader import PickleReader
from mergesmith.io.reader import SafetensorsReader, TensorReader


def _candidates(part: ModelPath, base_dir: Path | None) -> list[Path]:
    candidates = [Path(part.path).expanduser()]
    if base_dir is not None and not candidates[0].is_absolute():
        candidates.append(base_dir / candidates[0])
    return candidates


def _local(key: str, part: ModelPath, candidates: list[Path]) -> Path | None:
    """``part`` (one side of ``key``) as an existing local path, or None."""
    for candidate in candidates:
        if candidate.exists():
            if part.revision:
                raise InputFormatError(
                    f"model '{key}': {candidate} is a local path, so '@{part.revision}' (a Hub "
                    "revision) does not apply; remove it or check out that revision there"
                )
            return candidate.resolve()
    return None


def _not_found(key: str, part: ModelPath, candidates: list[Path]) -> InputFormatError:
    who = f"model '{key}'" if key == str(part) else f"model '{key}': '{part}'"
    return InputFormatError(
        f"{who} not found: no such file or directory (looked in {', '.join(str(c) for c in candidates)}); "
        "give a local model directory or .gguf file, or a Hugging Face Hub id org/name"
    )


def _locate(key: str, part: ModelPath, base_dir: Path | None, allow_pickle: bool = False) -> Path:
    """``part`` (one side of ``key``) as a local path, else as a Hub snapshot with its weights, else an error."""
    candidates = _candidates(part, base_dir)
    found = _local(key, part, candidates)
    if found is not None:
        return found
    if looks_like_hub_id(part.path):
        return snapshot_dir(key, part.path, part.revision, looked_in=candidates, allow_pickle=allow_pickle)
    raise _not_found(key, part, candidates)


def local_paths(key: str, base_dir: Path | None = None) -> list[Path]:
    """The local files and directories a reference reads (symlinks resolved), found without opening
    anything; Hub ids are left out (their snapshots are known once opened)."""
    try:
        ref = parse_reference(key)
    except ValueError:
        return []  # open_model reports it
    found = []
    for part in (ref.model, ref.lora):
        if part is not None:
            found += [c.resolve() for c in _candidates(part, base_dir) if c.exists()][:1]  # the one _locate picks
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
    return ModelInput(key, file, gguf_hf_config(reader.meta), infos, reader, gguf_file=file)


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
    key: str,
    *,
    base_dir: Path | None = None,
    allow_pickle: bool = False,
    lora_cache: Path | None = None,
) -> ModelInput:
    """Open one reference; ``base+adapter`` is merged into ``lora_cache`` (on the fly when None)."""
    ref = _parse(key)
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


def _parse(key: str) -> Reference:
    try:
        return parse_reference(key)
    except ValueError as exc:
        raise InputFormatError(f"model reference {exc}") from None


def _header_at(key: str, path: Path, allow_pickle: bool) -> ModelHeader:
    """The header of a model on disk: its files are opened, their headers read, and closed again."""
    model = _open_path(key, path, allow_pickle)
    model.reader.close()
    return model.header()


def _hub_header(key: str, part: ModelPath, candidates: list[Path], allow_pickle: bool) -> ModelHeader:
    """A Hub model's header: from the cache when its weights are there, else config, tokenizer files
    and shard index fetched, and the tensor headers read over HTTP range requests."""
    repo_id, revision = part.path, part.revision
    cached = cached_snapshot(key, repo_id, revision, looked_in=candidates, allow_pickle=allow_pickle)
    if cached is not None:
        return _header_at(key, cached, allow_pickle)
    folder = header_files(key, repo_id, revision, looked_in=candidates)
    # The cache names a snapshot directory by its commit: read the headers of exactly that commit.
    tensors = remote_tensors(key, repo_id, revision, commit=folder.name, looked_in=candidates)
    if tensors is None:  # no safetensors to read headers from (pickle only): the weights are needed
        folder = snapshot_dir(key, repo_id, revision, looked_in=candidates, allow_pickle=allow_pickle)
        return _header_at(key, folder, allow_pickle)
    return ModelHeader(key, folder, _read_config(folder, key), tensors)


def _check_adapter(key: str, base: ModelHeader, part: ModelPath, base_dir: Path | None) -> None:
    """``base+adapter`` as planning needs it: the adapter checked against the base's header, nothing
    folded. An adapter not on disk (a Hub id whose weights are not cached) has only its
    adapter_config.json fetched and checked; its tensors are checked when a merge downloads them."""
    from mergesmith.io.lora import ADAPTER_WEIGHTS, read_adapter
    from mergesmith.io.lora_config import ADAPTER_CONFIG, check_target_modules, read_config

    if base.gguf_file is not None:  # as io/lora.py's lora_view says it
        raise InputFormatError(
            f"model '{key}': LoRA adapters apply to safetensors or .bin model directories, "
            f"not to {base.gguf_file.name}; give the unquantized base model"
        )
    candidates = _candidates(part, base_dir)
    folder = _local(key, part, candidates)
    if folder is None and not looks_like_hub_id(part.path):
        raise _not_found(key, part, candidates)
    if folder is None:
        folder = header_files(key, part.path, part.revision, looked_in=candidates, files=(ADAPTER_CONFIG,))
        if not (folder / ADAPTER_WEIGHTS).is_file():
            check_target_modules(read_config(folder, key), folder / ADAPTER_CONFIG, key, base.tensors)
            return
    read_adapter(key, folder, base.tensors)  # headers only


def open_header(key: str, *, base_dir: Path | None = None, allow_pickle: bool = False) -> ModelHeader:
    """What planning reads of one reference; no weights are downloaded and no file stays open."""
    ref = _parse(key)
    candidates = _candidates(ref.model, base_dir)
    path = _local(key, ref.model, candidates)
    if path is not None:
        header = _header_at(key, path, allow_pickle)
    elif looks_like_hub_id(ref.model.path):
        header = _hub_header(key, ref.model, candidates, allow_pickle)
    else:
        raise _not_found(key, ref.model, candidates)
    if ref.lora is not None:
        _check_adapter(key, header, ref.lora, base_dir)
    return header


def open_headers(keys, *, base_dir: Path | None = None, allow_pickle: bool = False) -> dict[str, ModelHeader]:
    return {key: open_header(key, base_dir=base_dir, allow_pickle=allow_pickle) for key in keys}


def open_models(
    keys,
    *,
    base_dir: Path | None = None,
    allow_pickle: bool = False,
    lora_cache: Path | None = None,
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
