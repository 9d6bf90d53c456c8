"""Where inspect writes: output paths checked before any work, and JSON written whole or not at all."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from mergesmith.errors import ConfigError, OutputWriteError
from mergesmith.io.staging import replace_text
from mergesmith.output.directory import check_not_input


def check_output(path, flag: str, *, suffix: str | None = None, inputs: Iterable[tuple[str, Path]] = ()) -> Path:
    """``path`` (given as ``flag``) if a file can be written there; else a one-line error naming it.

    Checked before any tensor is read, so a long inspection is not lost at the end. ``inputs``
    (``(what, path)`` pairs) are never written over: an output inside an input model is refused.
    """
    path = Path(path)
    if suffix is not None and path.suffix.lower() != suffix:
        raise ConfigError(f"{flag} {path}: give a file name ending in {suffix}")
    if path.is_dir():
        raise OutputWriteError(
            f"{flag} {path} is a directory; give a file name such as {path / ('inspect' + (suffix or '.json'))}"
        )
    if not path.parent.is_dir():
        raise OutputWriteError(f"{flag} {path}: folder {path.parent} does not exist; create it or choose another path")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise OutputWriteError(f"{flag} {path}: folder {path.parent} is not writable; choose another path")
    check_not_input(path, inputs)
    return path


def json_text(data: dict) -> str:
    """``data`` as JSON with one top-level key per line and, in lists of objects (rows, series), one
    object per line: diffable and greppable, where an indented dump puts every number on a line."""

    def dump(value) -> str:
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            return "[\n  " + ",\n  ".join(json.dumps(v, allow_nan=False) for v in value) + "\n ]"
        return json.dumps(value, allow_nan=False)

    return "{\n" + ",\n".join(f" {json.dumps(k)}: {dump(v)}" for k, v in data.items()) + "\n}\n"


def write_json(data: dict, path) -> None:
    """``data`` as JSON (``json_text``); NaN never appears (undefined values are None, JSON null)."""
    try:
        text = json_text(data)
    except ValueError as exc:  # a NaN slipped through: a bug here, not the user's input
        raise OutputWriteError(f"{path}: not written, the results hold a non-finite number ({exc})") from None
    replace_text(path, text)
