"""``mergesmith export-gguf MODEL OUTDIR --quant f16,q8_0,q4_k_m [--eval]`` (also run by ``merge --gguf``)."""

from __future__ import annotations

from pathlib import Path

from mergesmith.cli.events import add_log_format
from mergesmith.gguf.pipeline import DEFAULT_EVAL_LIMIT, DEFAULT_QUANTS, EVAL_REFS


def add_eval_options(p) -> None:
    p.add_argument(
        "--eval-ref",
        choices=EVAL_REFS,
        default="f16",
        help="measure KL against the F16 GGUF (default; added to the files) or the HF model",
    )
    p.add_argument(
        "--text",
        dest="eval_text",
        nargs="+",
        metavar="FILE|NAME",
        help="UTF-8 text files or bundled text names to measure on (default: the bundled held-out texts)",
    )
    p.add_argument(
        "--context",
        dest="eval_context",
        type=int,
        metavar="N",
        help="tokens per window (default: 1024 or the model's limit)",
    )
    p.add_argument(
        "--limit",
        dest="eval_limit",
        type=int,
        default=DEFAULT_EVAL_LIMIT,
        metavar="N",
        help=f"only the first N windows per text (default {DEFAULT_EVAL_LIMIT}); each adds half a window of scored tokens",
    )


def add_parser(sub) -> None:
    from mergesmith.gguf.quants import BY_NAME

    p = sub.add_parser(
        "export-gguf",
        help="write GGUF files (F16, K-quants, ...) with llama.cpp and measure what each costs",
        description="Write a model directory as GGUF files, one per type; measure each.",
        epilog="Conversion is llama.cpp's converter, quantization llama.cpp's quantizer; files are "
        "OUTDIR/<model>-<TYPE>.gguf. With --eval, every file is scored against the F16 GGUF (perplexity, "
        "Δ perplexity, mean KL, top-1 agreement) and the table goes into the model card's 'GGUF' section. "
        "Needs llama-cpp-python: pip install 'mergesmith[llama]'.",
    )
    p.add_argument("model", metavar="MODEL", help="Hugging Face model directory (e.g. a merge output)")
    p.add_argument("out_dir", metavar="OUTDIR", help="folder for the .gguf files (created if missing)")
    p.add_argument(
        "--quant",
        default=DEFAULT_QUANTS,
        help=f"comma-separated types (default {DEFAULT_QUANTS}); one of: {', '.join(BY_NAME)}",
    )
    p.add_argument(
        "--eval", action="store_true", help="measure size, bpw, perplexity, Δppl, mean KL and top-1 per file"
    )
    add_eval_options(p)
    p.add_argument(
        "--no-card",
        dest="card",
        action="store_false",
        help="leave MODEL/README.md and OUTDIR/README.md alone (default: write their 'GGUF' section)",
    )
    p.add_argument("--force", action="store_true", help="replace .gguf files that exist")
    p.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help=THREADS_HELP.format(what="llama.cpp's quantizer", note="; export-gguf has one: all cores"),
    )
    p.add_argument(
        "--converter", type=Path, help="folder of llama.cpp's convert_hf_to_gguf.py (default: fetched into the venv)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress output")
    add_log_format(p)
    p.set_defaults(handler=run)


# One meaning of --threads wherever it appears (export-gguf, search): CPU threads per worker.
THREADS_HELP = "CPU threads per worker, for {what} (default: the machine's cores / the number of workers{note})"


def _export(model, out_dir, quants: str, **options) -> dict:
    """The report as the table a person reads and as the JSON result's ``report``."""
    from dataclasses import asdict

    from mergesmith.gguf.pipeline import export_and_report
    from mergesmith.gguf.report import render_text

    report = export_and_report(model, out_dir, quants, **options)
    return {"table": render_text(report), "report": asdict(report)}


def run(args) -> int:
    done = _export(
        args.model,
        args.out_dir,
        args.quant,
        evaluate=args.eval,
        eval_ref=args.eval_ref,
        eval_text=args.eval_text,
        eval_context=args.eval_context,
        eval_limit=args.eval_limit,
        card=args.card,
        force=args.force,
        threads=args.threads,
        converter=args.converter,
        progress=args.log.progress,
    )
    args.log.result(done["table"], out_dir=args.out_dir, report=done["report"])
    return 0


# --- merge --gguf TYPES [--gguf-eval] ------------------------------------------------------------


def add_merge_options(p) -> None:
    p.add_argument(
        "--gguf",
        metavar="TYPES",
        help="after the merge, write GGUF files of these types (e.g. q8_0,q4_k_m) "
        "into OUT-GGUF beside OUT, as `mergesmith export-gguf OUT OUT-GGUF` does",
    )
    p.add_argument(
        "--gguf-eval",
        action="store_true",
        help="with --gguf: measure every file against the F16 GGUF "
        "and add the table to the card (as export-gguf --eval)",
    )


def check_merge_options(args) -> None:
    """Before the merge starts: the types parse, llama-cpp-python and the converter are there."""
    if not args.gguf:
        if args.gguf_eval:
            from mergesmith.errors import ConfigError

            raise ConfigError("--gguf-eval measures the files of --gguf; add --gguf TYPES (e.g. --gguf q8_0,q4_k_m)")
        return
    from mergesmith.gguf.pipeline import check_ready

    check_ready(args.gguf)


def export_after_merge(args) -> dict | None:
    """``merge --gguf``: export OUT (complete by now) into OUT-GGUF; the table and report, or None."""
    if not args.gguf:
        return None
    out = Path(args.out)
    return _export(
        out,
        out.with_name(f"{out.name}-GGUF"),
        args.gguf,
        evaluate=args.gguf_eval,
        force=args.force,
        progress=args.log.progress,
    )
