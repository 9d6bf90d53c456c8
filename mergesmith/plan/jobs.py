"""The plan: a flat list of tensor jobs plus what the output directory needs. Frozen, no IO."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from mergesmith.arch.spec import ArchSpec
from mergesmith.methods.params import Params


@dataclass(frozen=True)
class RowFill:
    """Output rows an input lacks, made from other inputs' rows (see plan/vocab.py for the rules).

    ``donors`` are indices into the job's sources, ``donor_rows[d][i]`` the row of donor ``d``
    for ``rows[i]``; the fill is their mean (one donor: its row; none: zeros). Rule ``pad`` takes
    the mean of this input's own first ``RowMap.token_rows`` output rows instead.
    """

    rule: str  # base, mean, zero, override, pad
    rows: tuple[int, ...]
    donors: tuple[int, ...] = ()
    donor_rows: tuple[tuple[int, ...], ...] = ()


@dataclass(frozen=True)
class RowMap:
    """A vocabulary tensor re-indexed to the output vocabulary, rows along ``axis``."""

    size: int  # output rows
    axis: int
    input_rows: int  # rows of the input tensor
    token_rows: int  # rows [0, token_rows) are token ids
    copied: tuple[tuple[int, int, int], ...]  # runs (output row, input row, count) of own rows
    fills: tuple[RowFill, ...] = ()  # in order; pad fills come last


@dataclass(frozen=True)
class TensorSource:
    model: str  # recipe key of the input model
    name: str  # tensor name inside that model
    rows: RowMap | None = None  # set when the vocabulary tensor is re-indexed


@dataclass(frozen=True)
class TensorJob:
    output: str
    sources: tuple[TensorSource, ...]
    base_index: int | None
    method: str
    params: Params  # the method's own frozen type (methods/params.py)
    shape: tuple[int, ...]
    dtype: str  # compute dtype: inputs are cast to it before the method runs
    out_dtype: str  # dtype written to the output file
    layer: int | None = None  # output layer index; None for embeddings, norms, heads


@dataclass(frozen=True)
class LayerOrigin:
    """Where an output layer comes from, to carry per-layer config entries along."""

    model: str
    layer: int


@dataclass(frozen=True)
class AddedToken:
    """A token appended to the donor's tokenizer, with tokenizer.json's added-token flags."""

    id: int
    content: str
    special: bool = False
    normalized: bool = True
    lstrip: bool = False
    rstrip: bool = False
    single_word: bool = False


@dataclass(frozen=True)
class OutputVocab:
    """The output vocabulary: the donor's tokenizer plus ``new_tokens``, ``rows`` rows in all."""

    source: str  # base, union, or a model
    donor: str  # model whose tokenizer files the output starts from
    token_rows: int  # ids 0..token_rows-1 (the last token's id + 1)
    rows: int  # config vocab_size: kept donor rows, then padding
    new_tokens: tuple[AddedToken, ...] = ()


@dataclass(frozen=True)
class Calibration:
    """What a calibrated method (regmean) runs one input model on before merging: its texts as the
    recipe names them (files, relative to the recipe, or bundled names), and how many tokens."""

    model: str
    texts: tuple[str, ...]
    tokens: int


def statistics_key(model: str) -> str:
    """The input key under which a model's calibration statistics (Gram matrices) are read."""
    return f"{model}#grams"


@dataclass(frozen=True)
class Plan:
    jobs: tuple[TensorJob, ...]
    arch: ArchSpec
    config_donor: str  # model whose config.json the output starts from
    tokenizer_donor: str  # model whose tokenizer files the output gets
    layer_origins: tuple[LayerOrigin, ...]
    out_dtype: str | None  # recipe's out_dtype or dtype, for config.json
    seed: int
    warnings: tuple[str, ...] = ()
    vocab: OutputVocab | None = None  # set when tokenizer_source or a tokenizer section is given
    calibration: tuple[Calibration, ...] = ()  # models a calibrated method runs first (plan/calibration.py)

    @property
    def num_layers(self) -> int:
        return len(self.layer_origins)

    def by_output(self) -> Mapping[str, TensorJob]:
        return {job.output: job for job in self.jobs}
