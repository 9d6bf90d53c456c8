"""Mixture-of-experts families: one tensor per expert, merged expert by expert.

A data file marks a per-expert tensor with ``{expert}`` in its name (as ``{layer}`` marks the
layer) and names the config keys that hold the expert count (``experts_keys``, the first one
present wins) and the config values under which every decoder layer has experts
(``experts_require``; Qwen2-MoE can make some layers dense). ``with_experts`` expands the
templates for one input's config, so planning sees an ordinary list of per-layer tensors and
each expert becomes its own tensor job: slerp, linear and TIES act on each expert alone.

That is the layout transformers' ``save_pretrained`` writes and llama.cpp's converter reads
(``experts.N.w1`` / ``experts.N.gate_proj``). mergekit 0.1.5 instead reads the checkpoints
through transformers' fused in-memory layout (``mlp.experts.gate_up_proj`` of shape
[experts, 2 x intermediate, hidden]), so its slerp interpolates a layer's experts as one
vector and its TIES keeps the top-k of all experts together (README: where mergesmith differs).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import replace

from mergesmith.arch.spec import ArchSpec
from mergesmith.errors import ArchitectureError

EXPERT = "{expert}"
FUSED = (".experts.gate_up_proj", ".experts.down_proj")  # transformers 5's in-memory names


def expert_count(spec: ArchSpec, config: Mapping, source: str) -> int:
    """The number of experts per layer that ``config`` gives for ``spec``'s family."""
    for key in spec.experts_keys:
        value = config.get(key)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ArchitectureError(f"{source}: config.json {key} = {value!r} is not a positive expert count")
            return value
    raise ArchitectureError(
        f"{source}: config.json of this {spec.family} model has no expert count "
        f"({' or '.join(spec.experts_keys)}); add it"
    )


def _check_all_sparse(spec: ArchSpec, config: Mapping, source: str) -> None:
    for key, wanted in spec.experts_require:
        if key in config and json.dumps(config[key]) != wanted:
            raise ArchitectureError(
                f"{source}: config.json sets {key} = {json.dumps(config[key])}, so some layers have a dense MLP "
                f"instead of experts; mergesmith merges {spec.family} models whose every layer has experts "
                f"({key} = {wanted})"
            )


def _check_not_fused(spec: ArchSpec, names: Iterable[str], source: str) -> None:
    fused = sorted(n for n in names if n.endswith(FUSED))
    if fused:
        raise ArchitectureError(
            f"{source}: holds each layer's experts fused ({fused[0]}, the layout mergekit 0.1.5 writes); mergesmith "
            f"merges {spec.family} checkpoints with one tensor per expert, as the Hub's and transformers' "
            "save_pretrained of a Hub checkpoint have them"
        )


def with_experts(spec: ArchSpec, config: Mapping, source: str, names: Iterable[str] = ()) -> ArchSpec:
    """``spec`` with each ``{expert}`` template repeated for experts 0..E-1 (E from ``config``);
    ``spec`` itself when the family has no experts. ``names``: the input's tensors, to refuse fused experts."""
    if not spec.experts_keys:
        return spec
    _check_not_fused(spec, names, source)
    count = expert_count(spec, config, source)
    _check_all_sparse(spec, config, source)
    layer = []
    for weight in spec.layer:
        if EXPERT in weight.name:
            layer += [replace(weight, name=weight.name.replace(EXPERT, str(e))) for e in range(count)]
        else:
            layer.append(weight)
    return replace(spec, layer=tuple(layer), num_experts=count)


def check_expert_counts(specs: Mapping[str, ArchSpec]) -> None:
    """One ArchitectureError when the inputs (by recipe key) of an MoE family differ in their expert count."""
    counts = {key: spec.num_experts for key, spec in specs.items() if spec.num_experts is not None}
    same_family = len({specs[key].family for key in counts}) == 1  # else the planner names the families
    if same_family and len(set(counts.values())) > 1:
        keys = " / ".join(next(iter(specs.values())).experts_keys)
        listing = ", ".join(f"'{key}': {n}" for key, n in counts.items())
        raise ArchitectureError(
            f"models with different numbers of experts ({keys} in config.json: {listing}) cannot be merged "
            "expert by expert; merge fine-tunes of one MoE model"
        )
