"""PEFT LoRA adapters folded into their base model, one tensor at a time.

For every adapted layer ``W' = W + scale · (B @ A)`` (transposed for embeddings and for
``fan_in_fan_out`` Conv1D layers), with ``scale = alpha / r``, or ``alpha / sqrt(r)`` for rsLoRA
(Kalajdzievski 2023), ``r`` and ``alpha`` taken per module from ``rank_pattern`` /
``alpha_pattern`` as PEFT does. Tensors the adapter saved whole (``modules_to_save``, trained
biases, saved embedding layers) replace the base's. The sum is taken in float32 (at least) and
rounded once to the base's dtype, which is what PEFT's ``merge_and_unload()`` does on CPU.

``lora_view`` gives a reader that applies the adapter as tensors are read (``plan`` uses it: no
tensor IO); ``cached_merge`` writes that view once as a model directory under a cache root,
keyed by the contents of every file it derives from, and reuses it afterwards.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mergesmith._torch import torch
from mergesmith.errors import InputFormatError, OutputExistsError
from mergesmith.io.header import ModelInput
from mergesmith.io.lora_config import (
    ADAPTER_CONFIG,
    RESAVE,
    SUPPORTED,
    check_target_modules,
    read_config,
    saved_whole,
    scale,
)
from mergesmith.io.reader import (
    SafetensorsReader,
    TensorInfo,
    TensorReader,
    read_safetensors_header,
)
from mergesmith.io.staging import clear_stale, parent_lock
from mergesmith.io.writer import ShardedWriter, TensorSlot

ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
# Part of the cache key: change it whenever the bytes a merge writes would change.
CACHE_FORMAT = b"mergesmith-lora-1"
SHARD_SIZE = 5 * 10**9
# Base files copied next to the merged tensors (config, generation config, tokenizer).
METADATA_SUFFIXES = (".json", ".txt", ".model", ".jinja", ".tiktoken")

# module.lora_A[.adapter].weight (Linear, Conv1D) and module.lora_embedding_A[.adapter] (Embedding).
_FACTOR = re.compile(
    r"(?P<module>.+)\.lora_(?P<embedding>embedding_)?(?P<side>[AB])"
    r"(?:\.(?!weight$|bias$)(?P<adapter>[^.]+))?(?P<suffix>\.weight|\.bias)?"
)
# A whole tensor: module.weight, module.base_layer.weight, module.modules_to_save[.adapter].weight.
_SAVED = re.compile(r"(?P<module>.+?)(?P<wrapper>\.base_layer|\.modules_to_save(?:\.[^.]+)?)?\.(?P<param>weight|bias)")


@dataclass(frozen=True)
class Delta:
    """One adapted base tensor: ``target += scale · (b @ a)`` (transposed when ``transpose``)."""

    a: str
    b: str
    scale: float
    transpose: bool


@dataclass(frozen=True)
class Adapter:
    file: Path
    deltas: Mapping[str, Delta]  # base tensor name -> its LoRA update
    replaced: Mapping[str, str]  # base tensor name -> adapter tensor saved whole
    # lora_bias: base bias name -> (lora_B.bias tensor, scale): PEFT folds bias += scale · lora_B.bias.
    bias_deltas: Mapping[str, tuple[str, float]] = field(default_factory=dict)


def read_adapter(key: str, adapter_dir: Path, base: Mapping[str, TensorInfo]) -> Adapter:
    """Match every adapter tensor to the base tensor it changes; headers only."""
    config = read_config(adapter_dir, key)
    check_target_modules(config, adapter_dir / ADAPTER_CONFIG, key, base)
    file = adapter_dir / ADAPTER_WEIGHTS
    if not file.is_file():
        pickle = (adapter_dir / "adapter_model.bin").is_file()
        hint = (
            "adapter_model.bin is pickle: re-save it with peft's save_pretrained(safe_serialization=True)"
            if pickle
            else RESAVE
        )
        raise InputFormatError(f"model '{key}': {adapter_dir} has no {ADAPTER_WEIGHTS}; {hint}")
    header = read_safetensors_header(file)
    factors, transposed, replaced, biases = _classify(config, file, header)
    replaced = _untie(config, replaced, header, base)
    for target, source in {**replaced, **biases, **{t: min(f.values()) for t, f in factors.items()}}.items():
        if target not in base:
            raise InputFormatError(
                f"{file}: tensor {source} targets {target}, which base model '{key}' does not "
                "have (tied to another tensor, or the adapter was trained on a different model)"
            )
    for target, name in replaced.items():
        if tuple(header[name]["shape"]) != base[target].shape:
            raise InputFormatError(
                f"{file}: {name} has shape {header[name]['shape']} but {target} in the base has "
                f"{list(base[target].shape)}; resized vocabularies are not supported"
            )
    deltas = {t: _delta(config, file, header, t, f, transposed[t], base[t]) for t, f in factors.items()}
    return Adapter(file, deltas, replaced, _bias_deltas(file, header, biases, deltas, base))


def _untie(config: dict, replaced: dict, header: Mapping, base: Mapping[str, TensorInfo]) -> dict:
    """Under ``ensure_weight_tying``, PEFT saves a tied head whole beside the embedding it is tied to;
    a base that stores only the embedding takes the embedding's replacement, so the head's copy is
    left out (it must have the shape of another tensor the adapter replaces)."""
    if not config.get("ensure_weight_tying"):
        return replaced
    shapes = {tuple(header[name]["shape"]) for t, name in replaced.items() if t in base}
    return {t: n for t, n in replaced.items() if t in base or tuple(header[n]["shape"]) not in shapes}


def _bias_deltas(file: Path, header: Mapping, biases: dict, deltas: dict, base: Mapping[str, TensorInfo]) -> dict:
    """``lora_bias``: each ``lora_B.bias`` adds to its module's bias at the module's LoRA scale."""
    found = {}
    for target, name in biases.items():
        weight = target.removesuffix(".bias") + ".weight"
        if weight not in deltas:
            raise InputFormatError(f"{file}: {name} has no lora_A/lora_B weight pair for {weight}; {RESAVE}")
        if tuple(header[name]["shape"]) != base[target].shape:
            raise InputFormatError(
                f"{file}: {name} has shape {header[name]['shape']} but {target} in the base has "
                f"{list(base[target].shape)}; the adapter was trained on a different model"
            )
        found[target] = (name, deltas[weight].scale)
    return found


def _classify(config: dict, file: Path, header: Mapping) -> tuple[dict, dict, dict, dict]:
    """Adapter tensor names → ({target: {"A": name, "B": name}}, {target: transposed}, {target: name}
    saved whole, {bias target: lora_B.bias name})."""
    factors: dict[str, dict[str, str]] = {}
    transposed: dict[str, bool] = {}
    replaced: dict[str, str] = {}
    biases: dict[str, str] = {}
    adapter_names = set()
    for name in sorted(header):
        # PEFT saves names as the wrapped model sees them; the checkpoint has them without the wrapper.
        local = name.removeprefix(PEFT_PREFIX)
        if "lora_magnitude_vector" in local:
            raise InputFormatError(f"{file}: {name} is a DoRA magnitude; {SUPPORTED}")
        factor, saved = _FACTOR.fullmatch(local), _SAVED.fullmatch(local)
        # Linear factors end in .weight, embedding factors are bare parameters.
        if factor and factor["suffix"] != ".bias" and (factor["suffix"] is None) == bool(factor["embedding"]):
            target = factor["module"] + ".weight"
            factors.setdefault(target, {})[factor["side"]] = name
            transposed[target] = bool(factor["embedding"]) or bool(config.get("fan_in_fan_out"))
            adapter_names.add(factor["adapter"])
        elif factor and factor["suffix"] == ".bias" and factor["side"] == "B" and config.get("lora_bias"):
            biases[factor["module"] + ".bias"] = name
            adapter_names.add(factor["adapter"])
        elif saved and not factor and saved_whole(config, saved["module"], saved["wrapper"], saved["param"]):
            target = f"{saved['module']}.{saved['param']}"
            if target in replaced:
                raise InputFormatError(f"{file}: {replaced[target]} and {name} both replace {target}")
            replaced[target] = name
        else:
            raise InputFormatError(
                f"{file}: tensor {name} is neither a LoRA factor (lora_A, lora_B, lora_embedding_A, "
                f"lora_embedding_B) nor a module listed in modules_to_save; {SUPPORTED}"
            )
    if len(adapter_names) > 1:
        shown = ", ".join(sorted(n or "unnamed" for n in adapter_names))
        raise InputFormatError(f"{file}: holds several adapters ({shown}); save one adapter per directory")
    return factors, transposed, replaced, biases


def _delta(
    config: dict, file: Path, header: Mapping, target: str, pair: dict, transpose: bool, info: TensorInfo
) -> Delta:
    if set(pair) != {"A", "B"}:
        have, missing = (pair["A"], "B") if "A" in pair else (pair["B"], "A")
        raise InputFormatError(f"{file}: {have} has no matching lora_{missing}; the adapter file is incomplete")
    a, b = (tuple(header[pair[side]]["shape"]) for side in "AB")
    # B @ A is (out, in) = (b[0], a[1]); embeddings and fan_in_fan_out layers store its transpose.
    shape = None if len(a) != 2 or len(b) != 2 or a[0] != b[1] else (a[1], b[0]) if transpose else (b[0], a[1])
    if shape is None:
        raise InputFormatError(
            f"{file}: {pair['A']} {list(a)} and {pair['B']} {list(b)} do not make an update "
            f"for {target}; only 2-D (Linear, Conv1D, Embedding) LoRA is supported"
        )
    if shape != info.shape:
        raise InputFormatError(
            f"{file}: {pair['A']} {list(a)} and {pair['B']} {list(b)} make a {list(shape)} update "
            f"but {target} is {list(info.shape)} in the base; the adapter was trained on a "
            "different model"
        )
    if not info.dtype.is_floating_point:
        raise InputFormatError(f"{file}: {target} is {info.dtype} in the base; LoRA applies to float tensors")
    factor = scale(config, target.removesuffix(".weight"), a[0], file, pair["A"])
    return Delta(pair["A"], pair["B"], factor, transpose)


class LoraReader:
    """The base's tensors with the adapter folded in, computed as each one is read."""

    def __init__(self, base: TensorReader, adapter: Adapter):
        self.path = base.path
        self._base, self._adapter = base, adapter
        header = read_safetensors_header(adapter.file)
        self._factors = SafetensorsReader(adapter.file.parent, {name: adapter.file for name in header})

    def keys(self) -> list[str]:
        return self._base.keys()

    def info(self, name: str) -> TensorInfo:
        return self._base.info(name)

    def get(self, name: str) -> torch.Tensor:
        dtype = self._base.info(name).dtype
        whole = self._adapter.replaced.get(name)
        tensor = self._factors.get(whole).to(dtype) if whole else self._base.get(name)
        bias = self._adapter.bias_deltas.get(name)
        if bias is not None:
            compute = torch.promote_types(dtype, torch.float32)
            return (tensor.to(compute) + self._factors.get(bias[0]).to(compute) * bias[1]).to(dtype)
        delta = self._adapter.deltas.get(name)
        if delta is None:
            return tensor
        compute = torch.promote_types(dtype, torch.float32)
        update = self._factors.get(delta.b).to(compute) @ self._factors.get(delta.a).to(compute)
        if delta.transpose:
            update = update.T
        return (tensor.to(compute) + update * delta.scale).to(dtype)

    def close(self) -> None:
        self._factors.close()
        self._base.close()


def lora_view(key: str, base: ModelInput, adapter_dir: Path) -> ModelInput:
    """``base`` with the adapter in ``adapter_dir`` applied on read; takes over ``base.reader``."""
    if base.gguf_file is not None:
        raise InputFormatError(
            f"model '{key}': LoRA adapters apply to safetensors or .bin model directories, "
            f"not to {base.gguf_file.name}; give the unquantized base model"
        )
    adapter = read_adapter(key, adapter_dir, base.tensors)
    return ModelInput(key, base.path, base.config, base.tensors, LoraReader(base.reader, adapter))


def _inputs(base_dir: Path, adapter_dir: Path) -> list[Path]:
    """Every file the merged directory derives from: base tensors and metadata, adapter files."""
    files = [f for f in sorted(base_dir.iterdir()) if f.is_file()]
    weights = [f for f in files if f.suffix == ".safetensors"] or [f for f in files if f.suffix == ".bin"]
    meta = [f for f in files if f.suffix in METADATA_SUFFIXES]
    return weights + meta + [adapter_dir / ADAPTER_CONFIG, adapter_dir / ADAPTER_WEIGHTS]


def content_key(files: list[Path]) -> str:
    """sha256 over names, sizes and contents.

    This reads every byte of the base and adapter once per run: sha256 ran at 0.6 GB/s on the
    project's 2-core machine, about 2 s per GB of weights (27 s for an 8B model in bf16), less
    with SHA extensions, or the disk's speed when that is lower. It is the price of a key that
    cannot go stale when a file is replaced in place under the same name.
    """
    digest = hashlib.sha256(CACHE_FORMAT)
    buffer = bytearray(8 << 20)
    for i, file in enumerate(files):
        digest.update(f"\0{i}:{file.name}:{file.stat().st_size}\0".encode())
        with open(file, "rb") as fh:
            while count := fh.readinto(buffer):
                digest.update(memoryview(buffer)[:count])
    return digest.hexdigest()


def _claim_staging(final: Path) -> Path:
    """``.KEY.partial-PID`` beside the cache entry, after removing what killed runs left there (with a
    warning). A live process staging the same entry is not an error here: both finish, one rename wins."""
    with parent_lock(final):
        with contextlib.suppress(OutputExistsError):  # raised only for a live writer: see above
            clear_stale(final)
        staging = final.with_name(f".{final.name}.partial-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
    return staging


def cached_merge(view: ModelInput, adapter_dir: Path, cache_root: Path) -> Path:
    """The view written as a model directory under ``cache_root``; reused when already there."""
    files = _inputs(view.path, adapter_dir)
    digest = content_key(files)
    final = cache_root / digest[:32]
    if (final / "config.json").is_file():
        return final
    # Written beside its final name and renamed whole: an interrupted merge leaves no entry
    # that looks complete, and two processes merging the same pair both end with one entry.
    try:
        staging = _claim_staging(final)
    except OSError as exc:
        raise InputFormatError(
            f"LoRA cache {cache_root}: cannot write there ({exc.strerror}); "
            "give a writable directory with --lora-cache or MERGESMITH_CACHE"
        ) from None
    try:
        slots = [TensorSlot(name, info.shape, info.dtype) for name, info in view.tensors.items()]
        writer = ShardedWriter(staging, slots, SHARD_SIZE)
        try:
            for slot in slots:
                writer.write(slot.name, view.reader.get(slot.name))
            writer.finish()
        finally:
            writer.close()
        for file in files:
            if file.parent == view.path and file.suffix in METADATA_SUFFIXES and not file.name.endswith(".index.json"):
                shutil.copyfile(file, staging / file.name)
        provenance = {"base": str(view.path), "adapter": str(adapter_dir), "sha256": digest}
        (staging / "mergesmith_lora.json").write_text(json.dumps(provenance, indent=2) + "\n")
        try:
            os.rename(staging, final)
        except OSError:
            if not (final / "config.json").is_file():
                raise
            shutil.rmtree(staging, ignore_errors=True)  # another process finished the same entry first
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final
