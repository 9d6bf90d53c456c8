"""Canonical slices: the ``models:`` shorthand expanded, every slice checked against the models."""

from __future__ import annotations

from collections.abc import Mapping

from mergesmith.arch.spec import ArchSpec
from mergesmith.config.schema import OutputSlice, Recipe, SourceSlice
from mergesmith.errors import ConfigError
from mergesmith.io.header import ModelInput


def layer_count(arch: ArchSpec, model: ModelInput) -> int:
    return arch.num_layers(dict(model.config), f"model '{model.key}' ({model.path})")


def canonical_slices(recipe: Recipe, arch: ArchSpec, models: Mapping[str, ModelInput]) -> tuple[OutputSlice, ...]:
    """mergekit's normalisation: each listed model spans all its layers; a base that is not
    listed is appended as one more source."""
    if recipe.slices:
        return recipe.slices
    sources = [
        SourceSlice(model=m.model, layer_range=(0, layer_count(arch, models[m.model])), parameters=m.parameters)
        for m in recipe.models
    ]
    base = recipe.base_model
    if base and all(m.model != base for m in recipe.models):
        sources.append(SourceSlice(model=base, layer_range=(0, layer_count(arch, models[base]))))
    return (OutputSlice(sources=tuple(sources)),)


def check_slices(
    slices: tuple[OutputSlice, ...], arch: ArchSpec, models: Mapping[str, ModelInput], source: str
) -> None:
    for i, out_slice in enumerate(slices):
        lengths = []
        for j, src in enumerate(out_slice.sources):
            start, end = src.layer_range
            n = layer_count(arch, models[src.model])
            if not 0 <= start <= end <= n:
                raise ConfigError(
                    f"{source}: slices[{i}].sources[{j}].layer_range [{start}, {end}] is out of bounds for "
                    f"model '{src.model}', which has {n} layers ({arch.num_layers_key}); ranges are [start, end) "
                    f"with 0 <= start <= end <= {n}"
                )
            lengths.append(end - start)
        if len(set(lengths)) > 1:
            spans = ", ".join(
                f"'{s.model}' [{s.layer_range[0]}, {s.layer_range[1]}) = {n}"
                for s, n in zip(out_slice.sources, lengths)
            )
            raise ConfigError(
                f"{source}: slices[{i}] sources span different numbers of layers: {spans}; "
                "every source of one slice must cover the same count"
            )
