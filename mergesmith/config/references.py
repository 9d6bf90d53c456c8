"""Model references as mergekit writes them, parsed once into one canonical string.

A reference is ``path[@revision][+adapter[@revision]]`` — each side a local path or a Hub id —
or mergekit's mapping form ``{model: {path: P, revision: R}, lora: {path: A}}`` (each side may
also be a plain string). Every form becomes the string form, so the rest of the pipeline keys
models by strings and the plan and model card show them as ``base+adapter``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelPath:
    path: str
    revision: str | None = None

    def __str__(self) -> str:
        return f"{self.path}@{self.revision}" if self.revision else self.path


@dataclass(frozen=True)
class Reference:
    """A model, and optionally a PEFT LoRA adapter to fold into it before merging."""

    model: ModelPath
    lora: ModelPath | None = None

    def __str__(self) -> str:
        return f"{self.model}+{self.lora}" if self.lora else str(self.model)


def _model_path(text: str, whole: str) -> ModelPath:
    if text.count("@") > 1:
        raise ValueError(f"'{whole}' has more than one '@' in '{text}'; write path@revision")
    path, _, revision = text.partition("@")
    if not path or ("@" in text and not revision):
        raise ValueError(f"'{whole}' has an empty path or revision; write path, path@revision or base+adapter")
    return ModelPath(path, revision or None)


def parse_reference(text: str) -> Reference:
    """``base[@rev][+adapter[@rev]]`` → Reference; ValueError says what is malformed."""
    parts = text.split("+")
    if len(parts) > 2:
        raise ValueError(f"'{text}' has more than one '+'; write base+adapter (one LoRA adapter per model)")
    model = _model_path(parts[0], text)
    return Reference(model, _model_path(parts[1], text) if len(parts) == 2 else None)


def _check_keys(value: dict, allowed: tuple[str, ...], where: str) -> None:
    for key in value:
        if key not in allowed:
            match = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.5)
            hint = f"did you mean '{match[0]}'?" if match else f"valid keys: {', '.join(allowed)}"
            raise ValueError(f"unknown key '{key}' in {where}; {hint}")


def _path_from_mapping(value: Any, where: str) -> ModelPath:
    if isinstance(value, str):
        return _model_path(value, value)
    if not isinstance(value, dict):
        raise ValueError(f"{where} is a path string or {{path: ..., revision: ...}}, got {type(value).__name__}")
    _check_keys(value, ("path", "revision"), where)
    path, revision = value.get("path"), value.get("revision")
    if not isinstance(path, str) or not path or not (revision is None or isinstance(revision, str)):
        raise ValueError(f"{where} needs 'path' (a string) and optionally 'revision' (a string)")
    return ModelPath(path, revision or None)


def canonical_reference(value: Any) -> Any:
    """A recipe's model reference, string or mapping, → its one string form.

    Anything else is returned unchanged for the schema's own type check to reject.
    """
    if isinstance(value, str):
        return str(parse_reference(value))
    if not isinstance(value, dict):
        return value
    if "override_architecture" in value:
        raise ValueError("'override_architecture' is not supported; merge models of one architecture")
    _check_keys(value, ("model", "lora"), "a model reference")
    if "model" not in value:
        raise ValueError("a model reference mapping needs 'model' (and optionally 'lora')")
    model = _path_from_mapping(value["model"], "'model'")
    lora = _path_from_mapping(value["lora"], "'lora'") if value.get("lora") is not None else None
    for side in (model, lora):
        # The string form uses '+' and '@' as separators, so a path holding them has no string form.
        if side is not None and ("+" in side.path or "@" in side.path):
            raise ValueError(f"path '{side.path}' contains '+' or '@', which references use as separators; rename it")
    return str(Reference(model, lora))
