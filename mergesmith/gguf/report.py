"""What each GGUF file costs: size, bits per weight, and with ``--eval`` perplexity, Δ perplexity,
mean KL and top-1 agreement against the F16 GGUF (or the HF model), on the same tokens.

The numbers come from ``mergesmith.eval.evaluate`` (GGUF files run through llama.cpp); over
several texts they are pooled per token:

    ppl = exp(sum_texts N_t nll_t / sum_t N_t)      KL, top-1: token-weighted means
    Δppl = ppl(file) - ppl(reference)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from mergesmith.errors import ConfigError, InputFormatError
from mergesmith.gguf.export import ExportResult

MIB = 1024 * 1024


@dataclass(frozen=True)
class Quality:
    ppl: float
    delta_ppl: float | None  # None for the reference itself
    kl_mean: float | None
    top1: float | None


@dataclass(frozen=True)
class Row:
    file: str
    quant: str
    bytes: int
    bits_per_weight: float
    seconds: float
    quality: Quality | None = None


@dataclass(frozen=True)
class Report:
    rows: tuple[Row, ...]
    ref: str | None  # what KL is measured against (a file name or the HF model), None without --eval
    data: str  # "austen_heldout (2303 tokens), ..." when evaluated
    context: int | None = None
    stride: int | None = None
    limit: int | None = None
    date: str = ""


def _pooled(score, ref_ppl: float | None) -> Quality:
    tokens = sum(t.tokens for t in score.texts)
    ppl = math.exp(sum(t.nll * t.tokens for t in score.texts) / tokens)
    kls = [t.kl for t in score.texts]
    if any(k is None for k in kls):
        return Quality(ppl, None, None, None)
    kl = sum(k.mean * t.tokens for k, t in zip(kls, score.texts)) / tokens
    top1 = sum(k.top1 * t.tokens for k, t in zip(kls, score.texts)) / tokens
    return Quality(ppl, ppl - ref_ppl, kl, top1)


def plain_report(result: ExportResult) -> Report:
    """Sizes and export times only (no evaluation)."""
    rows = tuple(Row(f.path.name, f.quant, f.bytes, f.bits_per_weight, f.seconds) for f in result.files)
    return Report(rows, None, "", date=date.today().isoformat())


def evaluate_export(
    result: ExportResult,
    *,
    ref: str = "f16",
    texts: Sequence | None = None,
    context: int | None = None,
    stride: int | None = None,
    limit: int | None = None,
    progress: bool = False,
) -> Report:
    """Score every file of ``result`` against ``ref``: "f16" (the F16 file of the export) or "hf" (the model)."""
    from mergesmith.eval import evaluate
    from mergesmith.eval.data import bundled_texts

    if ref == "f16":
        f16 = result.file("f16")
        if f16 is None:
            raise ConfigError(
                "--eval against f16 needs the f16 file: add f16 to --quant, or measure against the HF model (--eval-ref hf)"
            )
        ref_path = str(f16.path)
    elif ref == "hf":
        ref_path = str(result.model)
    else:
        raise ConfigError(f"eval_ref {ref!r} (--eval-ref): choose f16 (the F16 GGUF) or hf (the Hugging Face model)")
    texts = list(texts) if texts else bundled_texts()
    files = [str(f.path) for f in result.files]
    scored = evaluate(
        files, ref=ref_path, texts=texts, tasks=None, context=context, stride=stride, limit=limit, progress=progress
    )
    ref_score = scored.model(ref_path)
    ref_ppl = _pooled(ref_score, None).ppl
    rows = []
    for f in result.files:
        score = scored.model(str(f.path))
        rows.append(
            Row(
                f.path.name,
                f.quant,
                f.bytes,
                f.bits_per_weight,
                f.seconds,
                _pooled(score, ref_ppl) if not score.is_ref else Quality(ref_ppl, None, None, None),
            )
        )
    data = ", ".join(f"{t.text} ({t.tokens} tokens)" for t in ref_score.texts)
    ref_name = Path(ref_path).name if ref == "f16" else f"{ref_path} (Hugging Face, float32)"
    return Report(tuple(rows), ref_name, data, scored.context, scored.stride, limit, scored.date)


def _cells(row: Row, evaluated: bool) -> list[str]:
    cells = [row.file, row.quant, f"{row.bytes / MIB:.1f}", f"{row.bits_per_weight:.2f}"]
    if evaluated:
        q = row.quality
        cells += [
            f"{q.ppl:.3f}",
            "ref" if q.delta_ppl is None else f"{q.delta_ppl:+.3f}",
            "-" if q.kl_mean is None else f"{q.kl_mean:.5f}",
            "-" if q.top1 is None else f"{q.top1:.4f}",
        ]
    return cells


def _head(evaluated: bool) -> list[str]:
    head = ["file", "type", "size MiB", "bpw"]
    return head + (["ppl", "Δppl", "mean KL", "top-1"] if evaluated else [])


def render_text(report: Report) -> str:
    """The terminal table, export time per file last."""
    evaluated = report.ref is not None
    rows = [_head(evaluated) + ["export s"]] + [_cells(r, evaluated) + [f"{r.seconds:.1f}"] for r in report.rows]
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(w) if c < 2 else cell.rjust(w) for c, (cell, w) in enumerate(zip(r, widths))).rstrip()
        for r in rows
    ]
    if evaluated:
        lines.append(
            f"# vs {report.ref} on {report.data}; context {report.context}, stride {report.stride}"
            + (f", first {report.limit} windows per text" if report.limit else "")
        )
    return "\n".join(lines)


def render_markdown(report: Report) -> str:
    evaluated = report.ref is not None
    head = _head(evaluated)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_cells(r, evaluated)) + " |" for r in report.rows]
    return "\n".join(lines)


def _card_ref(ref: str) -> str:
    """The reference as a card names it: "--eval-ref hf" records the model's path, which the card
    must not print (output/card_names.py); a file name stays as it is."""
    from mergesmith.output.card_names import shown_path

    path, marker, rest = ref.partition(" (Hugging Face")  # evaluate_export's "PATH (Hugging Face, float32)"
    return shown_path(Path(path).absolute()).text + marker + rest if marker else ref


def card_section(report: Report) -> str:
    from mergesmith.output.card import gguf_section

    note = "GGUF files for llama.cpp, converted and quantized with llama.cpp by `mergesmith export-gguf`."
    if report.ref is not None:
        window = f"context {report.context}, stride {report.stride}" + (
            f", first {report.limit} windows per text" if report.limit else ""
        )
        note += (
            f" Measured on {report.date} against {_card_ref(report.ref)} on {report.data} ({window}): perplexity, its change, "
            "mean KL divergence KL(reference || file) per token (nats) and top-1 agreement with the reference."
        )
    return gguf_section(render_markdown(report), note=note)


def read_card(card_path: Path, title: str) -> str:
    """The card at ``card_path``, or a new one with ``title``; export-gguf calls it before exporting too."""
    card_path = Path(card_path)
    try:
        return card_path.read_text(encoding="utf-8") if card_path.is_file() else f"# {title}\n"
    except UnicodeDecodeError:
        raise InputFormatError(
            f"{card_path} is not UTF-8; re-encode it as UTF-8, move it aside or leave the cards alone (card=False, --no-card)"
        ) from None


def write_card_section(card_path: Path, section: str, title: str, *, quantized_from: Path | None = None) -> None:
    """Put ``section`` into the card at ``card_path`` (created with a title when missing), atomically.

    ``quantized_from``: the model the GGUF files in the card's folder were made from; the card is
    then that folder's Hub card (front matter with ``base_model``, a sentence naming the model)."""
    from mergesmith.io.staging import replace_text
    from mergesmith.output.card import gguf_card, with_gguf_section

    card_path = Path(card_path)
    card = read_card(card_path, title)
    if quantized_from is None:
        replace_text(card_path, with_gguf_section(card, section))
        return
    existing = card if card_path.is_file() else None
    replace_text(card_path, gguf_card(existing, section, title=title, model=Path(quantized_from)))
