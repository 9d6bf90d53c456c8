"""The on-disk cache of calibration statistics: one directory per (model content, texts, tokens,
settings), so a second merge with another α or another partner reads its Gram matrices instead
of running the model again.

An entry ``ROOT/<key>/`` holds ``layer-NNNNN.safetensors`` (float32 Gram matrices of one decoder
layer, each named after the first linear weight it feeds; the sums were taken in float64) and
``calibration.json`` (format, provenance, and ``aliases``: every linear weight → the stored matrix
of its input, so q/k/v and gate/up share one). The key is sha256 over the model's files (weights
and JSON metadata, tokenizer.json or a sentencepiece .model among them; base and adapter for
``base+adapter``: io/lora.py's ``content_key``), the texts' contents, the token count and window
and ``FORMAT``. Entries are written into a staging sibling and renamed whole (io/staging.py): an
interrupted run leaves none that looks complete, and a damaged one is named when it is opened.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from mergesmith._torch import torch
from mergesmith.calibrate.texts import WINDOW, CalibrationText
from mergesmith.errors import (
    InputFormatError,
    MergesmithError,
    MissingTensorError,
    OutputExistsError,
    OutputWriteError,
)
from mergesmith.io.reader import SafetensorsReader, TensorInfo

# Part of the key: change it whenever the statistics a run writes would change.
FORMAT = "mergesmith-grams-1"
MANIFEST = "calibration.json"
_FILE_SUFFIXES = (".safetensors", ".bin", ".gguf", ".json", ".model")  # .model: sentencepiece tokenizers


def model_files(paths: Sequence[Path]) -> list[Path]:
    """The files a model's numbers come from: weights and JSON metadata of each directory, or the file."""
    files = []
    for path in paths:
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files += [f for f in sorted(path.iterdir()) if f.is_file() and f.suffix in _FILE_SUFFIXES]
    return files


def entry_key(model_digest: str, texts: Sequence[CalibrationText], tokens: int) -> str:
    payload = json.dumps(
        {
            "format": FORMAT,
            "model": model_digest,
            "texts": [t.sha256 for t in texts],
            "tokens": tokens,
            "window": WINDOW,
        }
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def is_complete(entry: Path) -> bool:
    return (entry / MANIFEST).is_file()


class GramReader:
    """An entry's Gram matrices by linear weight name (aliases resolved), as a tensor reader."""

    def __init__(self, entry: Path):
        self.path = entry
        try:  # every header checked against its file's size here: a later read cannot fail
            manifest = json.loads((entry / MANIFEST).read_text())
            self.aliases: dict[str, str] = dict(manifest["aliases"])
            files = {name: entry / file for name, file in manifest["files"].items()}
            self._reader = SafetensorsReader(entry, files)
            unknown = sorted(set(self.aliases.values()) - set(files))
            if unknown:
                raise InputFormatError(f"no stored matrix {unknown[0]}")
        except (OSError, ValueError, KeyError, TypeError, AttributeError, MergesmithError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise InputFormatError(
                f"calibration cache entry {entry} is damaged ({reason[:300]}); remove that directory "
                "and merge again: its Gram matrices are computed anew"
            ) from None

    def keys(self) -> list[str]:
        return list(self.aliases)

    def info(self, name: str) -> TensorInfo:
        if name not in self.aliases:
            raise MissingTensorError(f"{self.path}: no Gram matrix for {name}")
        stored = self._reader.info(self.aliases[name])
        return TensorInfo(name, stored.shape, stored.dtype)

    def get(self, name: str) -> torch.Tensor:
        self.info(name)
        return self._reader.get(self.aliases[name])

    def close(self) -> None:
        self._reader.close()


class EntryWriter:
    """Writes one entry layer by layer into ``.KEY.partial-PID`` and renames it into place."""

    def __init__(self, entry: Path, provenance: Mapping):
        from mergesmith.io.staging import claim_staging

        self.entry, self.provenance = entry, dict(provenance)
        try:
            self.staging = claim_staging(entry, force=False)
        except OSError as exc:
            raise InputFormatError(
                f"calibration cache {entry.parent}: cannot write there ({exc.strerror}); "
                "give a writable directory with --calibration-cache or MERGESMITH_CACHE"
            ) from None
        self.aliases: dict[str, str] = {}
        self.files: dict[str, str] = {}

    def add(self, index: int, grams: Mapping[str, torch.Tensor], aliases: Mapping[str, str]) -> None:
        from safetensors.torch import save_file

        name = f"layer-{index:05d}.safetensors" if index >= 0 else "model.safetensors"
        with self._writing():
            save_file({k: v.to(torch.float32).contiguous() for k, v in grams.items()}, str(self.staging / name))
        self.files.update({k: name for k in grams})
        self.aliases.update(aliases)

    @contextlib.contextmanager
    def _writing(self):
        from safetensors import SafetensorError  # what save_file raises for a full disk

        try:
            yield
        except (OSError, SafetensorError) as exc:  # a full disk or quota: ``written`` discards the entry
            reason = getattr(exc, "strerror", None) or str(exc)
            raise OutputWriteError(
                f"calibration cache {self.entry.parent}: cannot write {self.entry.name} ({reason}); "
                "free space there or give another directory with --calibration-cache"
            ) from None

    def finish(self) -> None:
        manifest = {**self.provenance, "format": FORMAT, "aliases": self.aliases, "files": self.files}
        with self._writing():
            (self.staging / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        try:
            os.rename(self.staging, self.entry)
        except OSError:
            if not is_complete(self.entry):
                raise
            shutil.rmtree(self.staging, ignore_errors=True)  # another process finished the same entry

    def discard(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)


def written(entry: Path, provenance: Mapping, layers: Iterable, poll: float = 0.5) -> Path:
    """``entry`` made from ``layers`` (``(index, grams, aliases)`` each) unless already complete.
    While another live process computes the same entry (two merges sharing a model), wait for it,
    with one warning, and reuse its entry; if that process dies first, compute it here."""
    waiting = False
    while not is_complete(entry):
        try:
            writer = EntryWriter(entry, provenance)  # another live process writing it: OutputExistsError
            break
        except OutputExistsError as exc:
            if entry.exists() and not is_complete(entry):
                raise InputFormatError(
                    f"calibration cache entry {entry} is incomplete (no {MANIFEST}); remove that directory and "
                    "merge again: its Gram matrices are computed anew"
                ) from None
            if not waiting:
                pid = re.search(r"\(pid (\d+)", str(exc))
                warnings.warn(
                    f"calibration cache entry {entry} is being computed by another process"
                    f"{f' (pid {pid[1]})' if pid else ''}; waiting for it, then its Gram matrices are reused",
                    stacklevel=2,
                )
                waiting = True
            time.sleep(poll)
    else:
        return entry
    try:
        for index, grams, aliases in layers:
            writer.add(index, grams, aliases)
        writer.finish()
    except BaseException:
        writer.discard()
        raise
    return entry
