"""The extraction loop: one module's tensor pair at a time, decomposed or saved into the adapter file.

Δ is formed in float32 (at least) on the chosen device from MODEL and BASE as stored, so a bf16
pair gives its exact difference; factors are stored in MODEL's dtype, as PEFT trains them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from mergesmith._torch import torch
from mergesmith.errors import ArchitectureError, ConfigError, InputFormatError, NonFiniteError
from mergesmith.extract import adapter as files
from mergesmith.extract.modules import (
    DROPPED,
    EXCLUDED,
    LORA,
    SAVED,
    SKIPPED,
    UNCHANGED,
    Module,
    Selection,
    route,
)
from mergesmith.extract.report import TensorRow
from mergesmith.extract.svd import Rank, decompose
from mergesmith.io.reader import TensorReader

BIAS_ROUTES = {files.LORA_BIAS: "bias delta (lora_B.bias)", files.LORA_ONLY: "bias whole (bias: lora_only)"}


class UndecomposableError(ArchitectureError):
    """A changed tensor is neither a matrix nor a 1-D vector: no LoRA factor or saved module fits it."""


@dataclass(frozen=True)
class Pair:
    model: TensorReader
    base: TensorReader
    device: str


@dataclass(frozen=True)
class _Bias:
    delta: torch.Tensor  # MODEL − BASE, in the bias's dtype
    whole: torch.Tensor  # MODEL's bias


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype:
        wider = torch.promote_types(a.dtype, b.dtype)
        a, b = a.to(wider), b.to(wider)
    return torch.equal(a, b)


class Extraction:
    """Accumulates the rows, ranks and saved modules of one adapter while it is written."""

    def __init__(
        self, pair: Pair, rule: Rank, selection: Selection, skip_undecomposable: bool, tied_heads: Mapping[str, str]
    ):
        self.pair, self.rule, self.selection, self.skip = pair, rule, selection, skip_undecomposable
        self.tied_heads = tied_heads
        self.ties = False  # a tied head written beside its embedding
        self.rows: list[TensorRow] = []
        self.ranks: dict[str, int] = {}  # LoRA module -> rank
        self.saved: list[str] = []  # modules_to_save
        self.biases: dict[str, _Bias | None] = {}  # LoRA module -> its bias (None: it has none)
        self.file: files.AdapterFile | None = None  # open while write() runs

    def write(
        self, path: Path, modules: list[Module], progress: bool, base_name: str
    ) -> tuple[list[TensorRow], int, dict]:
        """Every module into the adapter file ``path``; returns (rows, file size, adapter_config)."""
        self.file = files.AdapterFile(path)
        try:
            for module in _bar(modules, progress):
                self._module(module)
            mode = self._write_biases()
            self._check_not_empty()
            size = self.file.finish()
        except BaseException:
            self.file.close()
            raise
        config = files.adapter_config(
            base_name=base_name, ranks=self.ranks, saved=self.saved, bias=mode, ensure_weight_tying=self.ties
        )
        return self.rows, size, config

    def _rows(self, module: Module | None, where: str, tensors: Iterable[str] | None = None) -> None:
        for name in tensors if tensors is not None else module.tensors:
            self.rows.append(TensorRow(name, where, self.pair.model.info(name).shape))

    def _module(self, module: Module) -> None:
        if self.selection.saves(module.name):
            return self._save(module, {})
        if not self.selection.includes(module.name):
            return self._rows(module, EXCLUDED)
        tensors = {name: (self.pair.model.get(name), self.pair.base.get(name)) for name in module.tensors}
        changed = [name for name, (m, b) in tensors.items() if not _same(m, b)]
        where = route(module, changed, {name: m.dim() for name, (m, _) in tensors.items()}, self.selection)
        if where == SKIPPED and not self.skip:
            name = next(n for n in changed if tensors[n][0].dim() not in (1, 2))
            raise UndecomposableError(
                f"tensor {name} {list(tensors[name][0].shape)} changed but is neither a matrix nor a vector, so no LoRA "
                f"factor fits it; keep it with --save-module {module.name}, or leave it out with --skip-undecomposable"
            )
        if where == SAVED:
            return self._save(module, tensors)
        if where == LORA:
            return self._lora(module, tensors, changed)
        self._rows(module, where)

    def _save(self, module: Module, tensors: dict) -> None:
        """Every tensor of ``module`` from MODEL, under PEFT's modules_to_save names."""
        self.saved.append(module.name)
        for name in module.tensors:
            tensor = tensors[name][0] if name in tensors else self.pair.model.get(name)
            size = self.file.add(files.saved_name(name), tensor)
            self.rows.append(TensorRow(name, SAVED, tuple(tensor.shape), rel_error=0.0, nbytes=size))
            if name in self.tied_heads:
                self._tied_head(self.tied_heads[name], tensor)

    def _tied_head(self, head: str, tensor: torch.Tensor) -> None:
        """A tied head, written as a copy of its new embedding with ``ensure_weight_tying``: PEFT
        wraps the embedding alone otherwise, and its head would keep the base's matrix in memory."""
        self.ties = True
        size = self.file.add(files.saved_name(head), tensor)
        self.rows.append(
            TensorRow(head, "saved whole (tied to the embedding)", tuple(tensor.shape), rel_error=0.0, nbytes=size)
        )

    def _delta(self, name: str, model: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        compute = torch.promote_types(model.dtype, torch.float32)
        delta = model.to(self.pair.device, compute) - base.to(self.pair.device, compute)
        if not torch.isfinite(delta).all():
            raise NonFiniteError(f"tensor {name}: MODEL − BASE holds NaN or infinite values; check both checkpoints")
        return delta

    def _lora(self, module: Module, tensors: dict, changed: list[str]) -> None:
        model, base = tensors[module.weight]
        delta = self._delta(module.weight, model, base)
        # PEFT's Embedding update is (B·A)ᵀ: decompose Δᵀ so that B·A is (dim, vocab).
        low = decompose(delta.T if module.is_embedding else delta, self.rule, module.weight, model.dtype)
        if low.rank == 0 and module.bias in changed:  # the bias still changed: keep the module whole
            return self._save(module, tensors)
        if low.rank == 0:
            return self._rows(module, DROPPED)
        a_name, b_name = files.factor_names(module.name, module.is_embedding)
        size = self.file.add(a_name, low.a) + self.file.add(b_name, low.b)
        self.ranks[module.name] = low.rank
        self.rows.append(
            TensorRow(module.weight, LORA, tuple(model.shape), low.rank, low.kept_energy, low.rel_error, size)
        )
        bias = tensors.get(module.bias)
        self.biases[module.name] = (
            None
            if bias is None
            else _Bias((bias[0].to(torch.float64) - bias[1].to(torch.float64)).to(bias[0].dtype), bias[0])
        )

    def _write_biases(self) -> str:
        changed = any(b is not None and bool(b.delta.any()) for b in self.biases.values())
        mode = files.bias_mode({m: b is not None for m, b in self.biases.items()}, changed)
        for module, bias in self.biases.items():
            if bias is None:
                continue
            if mode == files.NO_BIAS:
                self._rows(None, UNCHANGED, [f"{module}.bias"])
                continue
            size = self.file.add(files.bias_name(module, mode), bias.delta if mode == files.LORA_BIAS else bias.whole)
            self.rows.append(TensorRow(f"{module}.bias", BIAS_ROUTES[mode], tuple(bias.whole.shape), nbytes=size))
        return mode

    def _check_not_empty(self) -> None:
        if self.ranks:
            return
        if not self.saved:
            raise InputFormatError(
                "MODEL and BASE hold the same values in every tensor extracted; there is no "
                "change to extract (check the paths, or widen --include-regex)"
            )
        raise ConfigError(
            f"no matrix was decomposed (every change is saved whole: {', '.join(self.saved[:3])}, ...), "
            "and a PEFT LoRA adapter needs at least one LoRA module; pass --embed-lora, or save the "
            "fine-tune as a model instead"
        )


def _bar(modules: list[Module], progress: bool):
    if not progress:
        return modules
    from tqdm import tqdm

    return tqdm(modules, desc="extracting", unit="module")
