"""The files of an input model directory, as untrusted input: strict JSON, shard indexes.

An index (``model.safetensors.index.json``, ``pytorch_model.bin.index.json``) maps tensor names
to shard files. Every shard it names, and every weights file found by name, must resolve inside
the model directory: a model must not make mergesmith read files elsewhere (``../``, absolute
paths, symlinks leading out). This is checked before any shard is opened.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

from mergesmith.errors import InputFormatError


def outside_model(model_dir: Path, file: Path) -> Path | None:
    """Where ``file`` really is, if that is outside ``model_dir``; None when it is inside.

    A Hugging Face cache snapshot (``<repo>/snapshots/<commit>``) holds symlinks into
    ``<repo>/blobs``, so for one of those the repository's blobs count as inside too.
    """
    resolved, root = file.resolve(), model_dir.resolve()
    roots = [root]
    if root.parent.name == "snapshots" and (root.parent.parent / "blobs").is_dir():
        roots.append((root.parent.parent / "blobs").resolve())
    return None if any(resolved.is_relative_to(r) for r in roots) else resolved


def require_inside(model_dir: Path, file: Path) -> Path:
    """``file`` itself, or an error if it is a symlink leading out of ``model_dir``."""
    resolved = outside_model(model_dir, file)
    if resolved is not None:
        raise InputFormatError(
            f"{file}: a symlink to {resolved}, outside the model directory {model_dir}; "
            "mergesmith reads only files inside it: copy the file there"
        )
    return file


def load_json(path: Path, raw: bytes, what: str) -> Any:
    """Strict JSON: UTF-8, no key twice in one object; errors name ``path``."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputFormatError(
            f"{path}: the {what} is not UTF-8 (byte {exc.start}: {exc.reason}); re-download or re-export it"
        ) from None
    try:
        return json.loads(text, object_pairs_hook=partial(_unique_keys, path, what))
    except (ValueError, RecursionError) as exc:  # RecursionError: nested deeper than the parser goes
        raise InputFormatError(f"{path}: the {what} is not valid JSON ({exc}); re-download or re-export it") from None


def _unique_keys(path: Path, what: str, pairs: list[tuple[str, Any]]) -> dict:
    # JSON lets a key repeat (the last one silently wins); a tensor listed twice is ambiguous.
    found: dict = {}
    for key, value in pairs:
        if key in found:
            raise InputFormatError(
                f"{path}: the {what} lists {key!r:.200} twice; which entry is meant is "
                "ambiguous, re-download or re-export the model"
            )
        found[key] = value
    return found


def read_index(model_dir: Path, index: Path) -> dict[str, Path]:
    """Tensor name -> shard file, from an index's ``weight_map``; every shard inside ``model_dir``."""
    try:
        raw = require_inside(model_dir, index).read_bytes()
    except OSError as exc:
        raise InputFormatError(f"{index}: cannot read the shard index ({exc})") from None
    data = load_json(index, raw, "shard index")
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict):
        raise InputFormatError(
            f"{index}: not a shard index: 'weight_map' is {weight_map!r:.80}, expected an object "
            "mapping tensor names to shard files; re-download the model"
        )
    return {name: _shard_file(model_dir, index, name, entry) for name, entry in weight_map.items()}


def _shard_file(model_dir: Path, index: Path, name: str, entry: Any) -> Path:
    # Checked before any shard is opened: an index must not make us read files elsewhere.
    where = f"{index}: tensor {name!r:.200} is mapped to {entry!r:.200}"
    if not isinstance(entry, str) or not entry:
        raise InputFormatError(f"{where}, not a shard file name; re-download the model")
    resolved = outside_model(model_dir, model_dir / entry)
    if resolved is None:
        return model_dir / entry
    how = "" if Path(entry).is_absolute() or ".." in Path(entry).parts else f" (a symlink to {resolved})"
    raise InputFormatError(
        f"{where}{how}, outside the model directory {model_dir}; an index may only name "
        "shards inside its own directory: re-download the model"
    )
