"""``inspect_models``: how far apart models are, tensor by tensor, before they are merged.

Inputs are recipe-style references (directories, shards, GGUF, ``base+adapter``, Hub ids),
opened as a merge opens them (io/resolve.py; adapters are folded on read, nothing is cached).
Tensors stream: one tensor of each model at a time, its statistics taken in chunks
(inspect/stats.py), so memory stays near one tensor per model whatever the model size, and each
input file is read once. Tensors that not every input has (a head tied in one model and untied in
another) and integer tensors are listed as skipped, not compared.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from mergesmith._torch import torch
from mergesmith.errors import ArchitectureError, ConfigError, NonFiniteError, ShapeMismatchError
from mergesmith.inspect import stats
from mergesmith.inspect.layout import Place, places
from mergesmith.io.header import ModelInput
from mergesmith.io.resolve import close_models, open_models

_FLOAT_DTYPES = ("float64", "float32", "float16", "bfloat16")


@dataclass(frozen=True)
class TensorRow:
    """One tensor's statistics; matrices are indexed in the order of ``Inspection.models``."""

    name: str
    layer: int | None
    module: str
    shape: tuple[int, ...]
    cosine: tuple[tuple[float | None, ...], ...]
    rel_l2: tuple[tuple[float, ...], ...]
    delta_norm: tuple[float | None, ...] | None = None  # with a base
    sign_agreement: tuple[tuple[float | None, ...], ...] | None = None  # with a base
    topk_energy: tuple[float | None, ...] | None = None  # with a base

    @property
    def numel(self) -> int:
        return int(torch.Size(self.shape).numel())


@dataclass(frozen=True)
class Inspection:
    models: tuple[str, ...]
    base: str | None
    top_k: int
    rows: tuple[TensorRow, ...]
    skipped: tuple[str, ...] = ()  # names not compared: missing from some input, or not floating point

    def to_dict(self) -> dict:
        """The ``--json`` document: None (JSON null) where a number is undefined."""
        rows = [{k: (list(v) if k == "shape" else v) for k, v in asdict(r).items()} for r in self.rows]
        return {
            "models": list(self.models),
            "base": self.base,
            "top_k": self.top_k,
            "rows": rows,
            "skipped": list(self.skipped),
        }


def _check_request(models: Sequence[str], base: str | None, top_k: int) -> list[str]:
    if isinstance(models, str):
        raise ConfigError(f"models = {models!r}: give a list of model references, not one string")
    models = list(models)
    if len(models) < 2 and (base is None or not models):
        raise ConfigError("inspect compares models: give at least two, or one model and a base (--base)")
    twice = sorted({m for m in models if models.count(m) > 1})
    if twice:
        raise ConfigError(f"model '{twice[0]}' is given twice; give each model once")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ConfigError(f"top_k = {top_k!r} (--top-k): give a whole number of singular directions, 1 or more")
    return models


def _names(opened: Mapping[str, ModelInput], reference: str) -> tuple[list[str], list[str]]:
    """Names every input has, in the reference model's order, and the ones left out."""
    every = [set(m.tensors) for m in opened.values()]
    union = set().union(*every)
    common = set.intersection(*every)
    if not common:
        keys = ", ".join(f"'{k}'" for k in opened)
        raise ArchitectureError(
            f"models {keys} have no tensor name in common; inspect compares models of one architecture"
        )
    ref = opened[reference].tensors
    names = [n for n in ref if n in common and ref[n].dtype_name in _FLOAT_DTYPES]
    return names, sorted(union - set(names))


def _check_shapes(opened: Mapping[str, ModelInput], names: list[str], reference: str) -> None:
    """Every shape checked from the headers before any tensor is read."""
    for name in names:
        want = tuple(opened[reference].tensors[name].shape)
        for key, model in opened.items():
            got = tuple(model.tensors[name].shape)
            if got != want:
                raise ShapeMismatchError(
                    f"tensor {name}: model '{key}' has shape {list(got)}, model '{reference}' has {list(want)}; "
                    "inspect compares models of one architecture and size"
                )


def _check_finite(sums: stats.Sums, name: str, keys: Sequence[str], base: str | None) -> None:
    # A non-finite entry makes every sum it enters non-finite; |D_i|^2 holds each model's entries.
    bad = [k for k, v in zip(keys, sums.gram.diagonal().tolist()) if not math.isfinite(v)]
    if base is not None and not math.isfinite(sums.base_sq):
        bad.insert(0, base)
    if bad:
        raise NonFiniteError(
            f"model '{bad[0]}': tensor {name} holds NaN or infinite values; repair or re-download that model"
        )


def _topk(tensors, base_tensor, top_k: int, scratch: stats.Scratch) -> tuple[float | None, ...]:
    """Each delta built whole (the SVD needs it), one model at a time, in a reused buffer."""
    if base_tensor.dim() < 2:
        return (None,) * len(tensors)
    return tuple(stats.topk_energy(stats.build_delta(t, base_tensor, scratch), top_k) for t in tensors)


def _frozen(matrix) -> tuple:
    return tuple(tuple(row) for row in matrix)


def _row(name: str, place: Place, tensors, base_tensor, keys, base, top_k: int, scratch: stats.Scratch) -> TensorRow:
    sums = stats.accumulate(tensors, base_tensor, scratch=scratch)
    _check_finite(sums, name, keys, base)
    row = dict(
        name=name,
        layer=place.layer,
        module=place.module,
        shape=tuple(tensors[0].shape),
        cosine=_frozen(stats.cosine(sums)),
        rel_l2=_frozen(stats.rel_l2(sums)),
    )
    if base_tensor is not None:
        row.update(
            delta_norm=tuple(stats.delta_norm(sums)),
            sign_agreement=_frozen(stats.sign_agreement(sums)),
            topk_energy=_topk(tensors, base_tensor, top_k, scratch),
        )
    return TensorRow(**row)


def _bar(total: int, progress: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="tensor", desc="inspecting", disable=not progress, leave=False)


def _rows(opened, models: list[str], base: str | None, top_k: int, device: str, progress: bool):
    reference = base if base is not None else models[0]
    names, skipped = _names(opened, reference)
    _check_shapes(opened, names, reference)
    ref = opened[reference]
    where = places(names, ref.config, {n: tuple(i.shape) for n, i in ref.tensors.items()}, reference)
    rows, scratch = [], stats.Scratch(device)
    with _bar(len(names), progress) as bar:
        for name in names:
            read = {key: opened[key].reader.get(name) for key in opened}  # each input once, the base included
            base_tensor = read[base] if base is not None else None
            rows.append(_row(name, where[name], [read[k] for k in models], base_tensor, models, base, top_k, scratch))
            del read, base_tensor  # mapped input pages go back before the next tensor
            bar.update()
    return tuple(rows), tuple(skipped)


def inspect_models(
    models: Sequence[str],
    base: str | None = None,
    *,
    top_k: int = 8,
    device: str = "cpu",
    progress: bool = False,
    base_dir=None,
    allow_pickle: bool = False,
) -> Inspection:
    """Pairwise statistics of ``models`` (and each against ``base``) for every tensor they share.

    See inspect/stats.py for the formulas. ``device``: where the arithmetic runs (cpu, cuda[:N]);
    ``base_dir``: where relative references are also looked up.
    """
    from mergesmith.execute.device import check_device

    models = _check_request(models, base, top_k)
    device = check_device(device)
    keys = models + ([base] if base is not None and base not in models else [])
    opened = open_models(keys, base_dir=base_dir, allow_pickle=allow_pickle, lora_cache=None)
    try:
        rows, skipped = _rows(opened, models, base, top_k, device, progress)
    finally:
        close_models(opened)
    return Inspection(tuple(models), base, top_k, rows, skipped)
