"""Run the calibration stage for a plan: per calibrated model, its cache entry (computed if
missing) opened as one more input, ``<model>#grams``, whose tensors the plan's jobs read."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from mergesmith.calibrate.cache import GramReader, entry_key, is_complete, model_files, written
from mergesmith.calibrate.texts import CalibrationText, load_tokenizer, read_texts, token_ids, windows
from mergesmith.errors import ArchitectureError, InputFormatError
from mergesmith.io.header import ModelHeader, ModelInput
from mergesmith.io.lora import content_key
from mergesmith.io.resolve import local_paths
from mergesmith.plan.jobs import Calibration, Plan, statistics_key


@dataclass(frozen=True)
class Prepared:
    """One model's calibration, resolved: texts read, token ids cut, its cache entry named."""

    calibration: Calibration
    texts: tuple[CalibrationText, ...]
    ids: tuple[int, ...]
    key: str | None  # None: the model's files are not on disk yet (a Hub model before download)


def model_digest(key: str, model: ModelHeader, base_dir: Path | None) -> str | None:
    """sha256 over the files the model's numbers come from (base and adapter of ``base+adapter``)."""
    paths = local_paths(key, base_dir) or [model.path]
    files = model_files(paths)
    if not any(f.suffix in (".safetensors", ".bin", ".gguf") for f in files):
        return None
    return content_key(files)


def prepare(plan: Plan, models: Mapping[str, ModelHeader], base_dir: Path | None, keys: bool = True) -> list[Prepared]:
    """Texts found and long enough for each model's tokenizer, and (``keys``) each cache key, which
    reads every byte of the model's files (io/lora.py's ``content_key``): before any run."""
    prepared = []
    for cal in plan.calibration:
        model = models[cal.model]
        texts = read_texts(cal.texts, base_dir, cal.model)
        ids = token_ids(load_tokenizer(model.tokenizer_dir, cal.model), texts, cal.tokens, cal.model)
        _check_ids(ids, model, cal.model)
        digest = model_digest(cal.model, model, base_dir) if keys else None
        key = None if digest is None else entry_key(digest, texts, cal.tokens)
        prepared.append(Prepared(cal, tuple(texts), tuple(ids), key))
    return prepared


def _check_ids(ids, model: ModelHeader, key: str) -> None:
    config = model.config.get("text_config") or model.config
    rows = config.get("vocab_size")
    if isinstance(rows, int) and ids and max(ids) >= rows:
        raise InputFormatError(
            f"model '{key}': its tokenizer gives token id {max(ids)} but the model has vocab_size {rows}; "
            "the tokenizer files do not belong to this model"
        )


def _provenance(p: Prepared, model: ModelInput) -> dict:
    return {
        "model": p.calibration.model,
        "path": str(model.path),
        "texts": [{"name": t.name, "path": str(t.path), "sha256": t.sha256} for t in p.texts],
        "tokens": p.calibration.tokens,
    }


@contextlib.contextmanager
def statistics_inputs(
    plan: Plan,
    models: Mapping[str, ModelInput],
    base_dir: Path | None,
    cache_root: Path | None,
    say: Callable[[str], None] = lambda _m: None,
    progress: bool = False,
) -> Iterator[dict[str, ModelInput]]:
    """``{model#grams: input}`` for the plan's calibrated models; computed where not cached.
    ``cache_root`` None: computed into a temporary directory, removed on exit. ``progress``: a
    bar per model, one step per layer."""
    from mergesmith.calibrate.stream import layer_grams

    if cache_root is not None:
        check_cache_root(cache_root)
    scratch = Path(tempfile.mkdtemp(prefix="mergesmith-grams-")) if cache_root is None else None
    root = cache_root if cache_root is not None else scratch
    opened: dict[str, ModelInput] = {}
    try:
        for p in prepare(plan, models, base_dir):
            model = models[p.calibration.model]
            key = p.key or model_digest(p.calibration.model, model, base_dir) or "unkeyed"
            entry = root / key
            if not is_complete(entry):
                say(f"calibrating {p.calibration.model} on {len(p.ids)} tokens")
                layers = layer_grams(model, plan.arch, windows(p.ids))
                if progress:
                    from tqdm import tqdm

                    total = plan.arch.num_layers(dict(model.config), p.calibration.model)
                    layers = tqdm(layers, total=total, unit="layer", desc="calibrating")
                written(entry, _provenance(p, model), layers)
            reader = GramReader(entry)
            infos = {name: reader.info(name) for name in reader.keys()}
            opened[statistics_key(p.calibration.model)] = ModelInput(
                statistics_key(p.calibration.model), entry, {}, infos, reader
            )
        check_grams(plan, opened)
        yield opened
    finally:
        for model in opened.values():
            model.reader.close()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def check_cache_root(root: Path) -> None:
    """The calibration cache is a directory, or can become one: before any model is keyed or run."""
    fix = "give a writable directory with --calibration-cache (calibration_cache in the API) or MERGESMITH_CACHE"
    if root.exists() and not root.is_dir():
        raise InputFormatError(f"calibration cache {root} is a file, not a directory; {fix}")
    existing = next(p for p in (root, *root.parents) if p.exists())
    if not existing.is_dir():
        raise InputFormatError(f"calibration cache {root}: {existing} is a file, not a directory; {fix}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputFormatError(f"calibration cache {root}: {existing} is not writable; {fix}")


def check_grams(plan: Plan, statistics: Mapping[str, ModelInput]) -> None:
    """Every Gram a job reads exists, ``[in, in]`` for its weight's ``in``."""
    for job in plan.jobs:
        for source in job.sources:
            model = statistics.get(source.model)
            if model is None:
                continue
            info = model.tensors.get(source.name)
            if info is None:
                raise ArchitectureError(
                    f"{source.model}: the calibration run recorded no input of {source.name} (not an nn.Linear "
                    "in transformers' model of this architecture); merge it with another method"
                )
            if info.shape != (job.shape[1], job.shape[1]):
                raise ArchitectureError(
                    f"{source.model}: the Gram matrix of {source.name} is {list(info.shape)}, its weight "
                    f"{list(job.shape)} takes inputs of {job.shape[1]}; the checkpoint does not match its config"
                )
