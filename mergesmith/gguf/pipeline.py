"""Export, measure and document in one call: what ``mergesmith export-gguf`` and ``merge --gguf`` run.

    from mergesmith.gguf.pipeline import export_and_report
    report = export_and_report("out/merged", "out/merged-GGUF", "q8_0,q4_k_m", evaluate=True)

Everything that can be checked before the (minutes-long) export is checked first: the types,
the texts, the cards, llama-cpp-python and the converter.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mergesmith.errors import ConfigError

DEFAULT_QUANTS = "f16,q8_0,q6_k,q5_k_m,q4_k_m,q3_k_m"
# Windows per text scored by default: llama.cpp runs each file on one thread (eval/gguf_model.py
# says why), and the whole held-out texts (2 × ~25k tokens, windows overlapping by half) take
# ~15 min per file even for SmolLM2-135M on this machine's cores.
DEFAULT_EVAL_LIMIT = 4
EVAL_REFS = ("f16", "hf")


def check_ready(quants: str | None) -> None:
    """The types parse, llama-cpp-python imports, and llama.cpp's converter is there (fetched now if not)."""
    from mergesmith.eval.llama_cpp import import_llama_cpp
    from mergesmith.gguf.converter import ensure_converter
    from mergesmith.gguf.quants import parse_quants

    parse_quants(quants)
    import_llama_cpp()
    ensure_converter()


def _check_eval(eval_ref: str, eval_text: Sequence | None) -> None:
    from mergesmith.eval.data import read_text

    if eval_ref not in EVAL_REFS:
        raise ConfigError(f"eval_ref {eval_ref!r}: choose f16 (the F16 GGUF) or hf (the Hugging Face model)")
    for text in eval_text or ():
        read_text(text)


def export_and_report(
    model,
    out_dir,
    quants: str,
    *,
    evaluate: bool,
    eval_ref: str = "f16",
    eval_text: Sequence | None = None,
    eval_context: int | None = None,
    eval_limit: int = DEFAULT_EVAL_LIMIT,
    card: bool = True,
    force: bool = False,
    threads: int | None = None,
    converter: Path | None = None,
    progress: bool = True,
):
    """Export ``model`` to GGUF files of ``quants`` in ``out_dir``; score each against the reference
    when ``evaluate``; write the table into both model cards when ``card``. Returns the report."""
    from mergesmith.gguf.export import export_gguf
    from mergesmith.gguf.quants import BY_NAME, parse_quants
    from mergesmith.gguf.report import (
        card_section,
        evaluate_export,
        plain_report,
        read_card,
        write_card_section,
    )

    wanted = parse_quants(quants)
    if evaluate:  # an unreadable text or a bad reference choice must not wait for the export
        _check_eval(eval_ref, eval_text)
    if card:  # an unreadable card fails now, not after the export
        read_card(Path(model) / "README.md", "")
        read_card(Path(out_dir) / "README.md", "")
    if evaluate and eval_ref == "f16" and BY_NAME["f16"] not in wanted:
        wanted = (BY_NAME["f16"],) + wanted  # the reference is one of the files
    result = export_gguf(model, out_dir, wanted, force=force, converter=converter, threads=threads, progress=progress)
    report = (
        evaluate_export(
            result, ref=eval_ref, texts=eval_text, context=eval_context, limit=eval_limit, progress=progress
        )
        if evaluate
        else plain_report(result)
    )
    if card:
        section = card_section(report)
        name = Path(model).resolve().name
        write_card_section(Path(model) / "README.md", section, name)
        write_card_section(Path(out_dir) / "README.md", section, f"{name} GGUF", quantized_from=Path(model))
    return report
