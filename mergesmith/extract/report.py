"""What an extraction did, tensor by tensor: the report ``extract_lora`` returns, its table, and the
adapter's model card (README.md)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mergesmith.extract.modules import UNCHANGED


@dataclass(frozen=True)
class TensorRow:
    """One tensor of MODEL. ``rank``, ``kept_energy`` and ``rel_error`` are set for LoRA factors
    (kept_energy = Σ kept σ² / ‖Δ‖², rel_error = ‖Δ − B·A‖ / ‖Δ‖ with the stored factors); a
    tensor saved whole has error 0; ``nbytes`` is what it adds to adapter_model.safetensors."""

    tensor: str
    route: str
    shape: tuple[int, ...]
    rank: int | None = None
    kept_energy: float | None = None
    rel_error: float | None = None
    nbytes: int = 0


@dataclass(frozen=True)
class ExtractReport:
    out: Path
    rows: tuple[TensorRow, ...]
    adapter_bytes: int  # size of adapter_model.safetensors
    config: dict  # adapter_config.json as written
    method: str  # how the factors were computed, for the card

    @property
    def ranks(self) -> dict[str, int]:
        """LoRA module -> rank."""
        return {row.tensor.removesuffix(".weight"): row.rank for row in self.rows if row.rank is not None}

    def table(self) -> str:
        """A Markdown table of every tensor that is not unchanged, then the totals."""
        lines = [
            "| tensor | shape | route | rank | kept energy | rel. error | bytes |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in self.rows:
            if row.route == UNCHANGED:
                continue
            numbers = ("" if row.rank is None else str(row.rank), _percent(row.kept_energy), _sci(row.rel_error))
            shape = "×".join(map(str, row.shape))
            lines.append(f"| {row.tensor} | {shape} | {row.route} | {' | '.join(numbers)} | {_size(row.nbytes)} |")
        return "\n".join(lines + ["", self.summary()])

    def summary(self) -> str:
        unchanged = sum(row.route == UNCHANGED for row in self.rows)
        ranks = sorted(set(self.ranks.values()))
        span = f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {ranks[0]}–{ranks[-1]}" if ranks else "no LoRA"
        return (
            f"{len(self.ranks)} LoRA modules ({span}), {len(self.config.get('modules_to_save') or ())} modules "
            f"saved whole, {unchanged} tensors unchanged (not written); adapter {_size(self.adapter_bytes)}"
        )


def _percent(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.2f}%"


def _sci(value: float | None) -> str:
    return "" if value is None else f"{value:.2e}"


def _size(nbytes: int) -> str:
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} B"


def model_card(report: ExtractReport, model_name: str, base_name: str) -> str:
    config = report.config
    bias = {True: "bias deltas as `lora_B.bias` (`lora_bias: true`)"}.get(config["lora_bias"]) or (
        "changed biases saved whole (`bias: lora_only`)" if config["bias"] == "lora_only" else "no bias changes"
    )
    return f"""---
base_model: {base_name}
library_name: peft
tags: [lora, mergesmith, extracted]
---
# LoRA extracted from {model_name}

A PEFT LoRA adapter for **{base_name}** that approximates the fine-tune **{model_name}**: for each
changed matrix, the truncated SVD of the task vector Δ = W_model − W_base, as B = U·√Σ, A = √Σ·Vᵀ
with `lora_alpha = r` (scale 1). {report.method}. Norms and other changed 1-D tensors, and
embeddings unless extracted as LoRA, are in `modules_to_save`; {bias}.

Load it with `peft.PeftModel.from_pretrained(base, path)`, or fold it in a mergesmith (or mergekit)
recipe as `{base_name}+<this adapter>`.

"Kept energy" is Σ kept σ² / ‖Δ‖²; "rel. error" is ‖Δ − B·A‖ / ‖Δ‖ (Frobenius) with the factors as stored.

{report.table()}
"""
