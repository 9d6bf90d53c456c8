"""Layer stacking (frankenmerges; the "data-flow space" of Akiba et al. 2024, "Evolutionary
Optimization of Model Merging Recipes", arXiv:2403.13187): which source layers go where.

A ``passthrough`` recipe's slices take choice markers on what each slice copies:

    slices:
      - sources: [{model: {choice: [kjv, austen]}, layer_range: {choice: [[0, 10], [0, 15]]}}]
      - sources: [{model: austen, layer_range: {choice: [[10, 30], [5, 30]]},
                   parameters: {scale: {range: [0.8, 1.0]}}}]

Each marker is one choice dim (a donor model, a ``[start, end)`` range: overlapping ranges repeat
layers), and ``scale`` per slice is an ordinary parameter range. Candidates of different layer
counts are fine: each worker keeps a resident model per shape (``resident.Evaluator``). The
random optimizer draws them (CMA-ES takes ranges only).
"""

from __future__ import annotations

from typing import Any

from mergesmith.errors import ConfigError
from mergesmith.search.space import Dim, Slot, put

STACK_KEYS = ("model", "layer_range")


def _options(key: str, marker: Any, where: str) -> tuple:
    choice = marker.get("choice") if isinstance(marker, dict) and set(marker) == {"choice"} else None
    if not isinstance(choice, list) or len(choice) < 2:
        raise ConfigError(f"{where}: {key} takes {{choice: [...]}} with at least 2 options, got {marker!r}")
    if key == "model":
        if not all(isinstance(o, str) for o in choice):
            raise ConfigError(f"{where}: model choices are model references (strings), got {choice!r}")
        return tuple(choice)
    ok = all(
        isinstance(o, list) and len(o) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in o)
        for o in choice
    )
    if not ok or any(not 0 <= o[0] < o[1] for o in choice):
        raise ConfigError(
            f"{where}: layer_range choices are [start, end) pairs of integers, start < end; got {choice!r}"
        )
    return tuple(tuple(o) for o in choice)


def stack_dims(tpl: dict, dims: list, slots: list, where: str) -> None:
    """Turn the choice markers of slice sources into dims and slots (in place)."""
    for i, out_slice in enumerate(tpl.get("slices") or ()):
        if not isinstance(out_slice, dict):
            continue
        for j, src in enumerate(out_slice.get("sources") or ()):
            if not isinstance(src, dict):
                continue
            for key in STACK_KEYS:
                if isinstance(src.get(key), dict):
                    options = _options(key, src[key], f"{where}: slices[{i}].sources[{j}]")
                    label = f"slices[{i}]." + (key if len(out_slice["sources"]) == 1 else f"sources[{j}].{key}")
                    slots.append(Slot(("slices", i, "sources", j, key), (len(dims),), False))
                    dims.append(Dim(label, options=options))
                    put(tpl, ("slices", i, "sources", j, key), None)


def model_options(space) -> set[str]:
    """Every model a stack's model choices can name (their inputs are opened up front)."""
    return {
        o for b in space.branches for slot in b.slots if slot.path[-1] == "model" for o in b.dims[slot.dims[0]].options
    }
