"""The plan: a flat list of tensor jobs plus what the output directory needs. Frozen, no IO."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

from mergesmith.arch.spec import ArchSpec
from mergesmith.methods.spec import MethodParams


@dataclass(frozen=True)
class TensorSource:
    model: str     # recipe key of the input model
    name: str      # tensor name inside that model


@dataclass(frozen=True)
class TensorJob:
    output: str
    sources: tuple[TensorSource, ...]
    base_index: Optional[int]
    method: str
    params: MethodParams
    shape: tuple[int, ...]
    dtype: str       # compute dtype: inputs are cast to it before the method runs
    out_dtype: str   # dtype written to the output file
    layer: Optional[int] = None   # output layer index; None for embeddings, norms, heads


@dataclass(frozen=True)
class LayerOrigin:
    """Where an output layer comes from, to carry per-layer config entries along."""

    model: str
    layer: int


@dataclass(frozen=True)
class Plan:
    jobs: tuple[TensorJob, ...]
    arch: ArchSpec
    config_donor: str              # model whose config.json the output starts from
    tokenizer_donor: str           # model whose tokenizer files the output gets
    layer_origins: tuple[LayerOrigin, ...]
    out_dtype: Optional[str]       # recipe's out_dtype or dtype, for config.json
    seed: int
    warnings: tuple[str, ...] = ()

    @property
    def num_layers(self) -> int:
        return len(self.layer_origins)

    def by_output(self) -> Mapping[str, TensorJob]:
        return {job.output: job for job in self.jobs}
