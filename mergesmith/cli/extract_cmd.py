"""``mergesmith extract-lora MODEL BASE OUT``: a PEFT LoRA adapter from a full fine-tune and its base."""

from __future__ import annotations

import sys


def _rank(text: str):
    """``--max-rank``: a positive integer or ``auto`` (argparse turns a ValueError into a usage error)."""
    if text == "auto":
        return text
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


_rank.__name__ = "rank (a positive integer or 'auto')"  # what argparse's error message calls the type


def add_parser(sub) -> None:
    p = sub.add_parser(
        "extract-lora",
        help="extract a LoRA adapter from a fine-tune and its base",
        description="Write a PEFT LoRA adapter of MODEL minus BASE into OUT.",
        epilog="Each changed matrix becomes the truncated SVD of its delta; changed norms and other "
        "1-D tensors, and embeddings unless --embed-lora, are saved whole in modules_to_save.",
    )
    p.add_argument("model", help="the fine-tuned model (directory, .gguf, Hub id, or base+adapter)")
    p.add_argument("base", help="the model it was fine-tuned from")
    p.add_argument("out", help="adapter directory to write (appears only when complete)")
    p.add_argument(
        "--max-rank",
        required=True,
        type=_rank,
        metavar="R|auto",
        help="largest LoRA rank; auto: each matrix's smallest rank that keeps --energy of its Σσ²",
    )
    p.add_argument(
        "--energy",
        type=float,
        metavar="E",
        help="share of each delta's Σσ² to keep (default 0.95 with "
        "--max-rank auto; with an integer rank it lowers ranks that need less)",
    )
    p.add_argument(
        "--sv-epsilon",
        type=float,
        default=0.0,
        metavar="E",
        help="drop singular values below E (default 0: keep all up to the rank)",
    )
    p.add_argument(
        "--embed-lora",
        action="store_true",
        help="extract embeddings and the output head as LoRA too (default: saved whole)",
    )
    p.add_argument(
        "--save-module",
        action="append",
        default=[],
        metavar="NAME",
        dest="save_modules",
        help="save this module whole (a name or its dotted tail, e.g. lm_head); repeatable",
    )
    p.add_argument(
        "-i",
        "--include-regex",
        action="append",
        metavar="RE",
        help="only modules whose name matches RE (re.search); repeatable: any of them",
    )
    p.add_argument(
        "-e",
        "--exclude-regex",
        action="append",
        metavar="RE",
        help="leave out modules whose name matches RE; repeatable",
    )
    p.add_argument(
        "--skip-undecomposable",
        action="store_true",
        help="leave out changed tensors that are neither matrices nor vectors instead of failing",
    )
    p.add_argument(
        "--base-name",
        metavar="NAME",
        help="base_model_name_or_path to write (default: the Hub id of BASE, or its directory name)",
    )
    p.add_argument("--device", default="cpu", help="where the SVDs run: cpu (default) or cuda[:N]")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress output and no table")
    p.set_defaults(handler=run)


def _any_of(patterns: list[str] | None) -> str | None:
    """Repeated regex options as one pattern that matches where any of them does."""
    if not patterns:
        return None
    return "|".join(f"(?:{p})" for p in patterns)


def run(args) -> int:
    from mergesmith.extract import extract_lora

    report = extract_lora(
        args.model,
        args.base,
        args.out,
        max_rank=args.max_rank,
        energy=args.energy,
        sv_epsilon=args.sv_epsilon,
        embed_lora=args.embed_lora,
        save_modules=tuple(args.save_modules),
        include_regex=_any_of(args.include_regex),
        exclude_regex=_any_of(args.exclude_regex),
        skip_undecomposable=args.skip_undecomposable,
        device=args.device,
        force=args.force,
        progress=not args.quiet,
        base_name=args.base_name,
    )
    log = getattr(args, "log", None)  # set by mergesmith.cli.main; absent when a caller runs the handler itself
    if log is not None:
        log.result(
            None if args.quiet else report.table(),
            out=str(report.out),
            ranks=report.ranks,
            adapter_bytes=report.adapter_bytes,
            modules_to_save=report.config["modules_to_save"] or [],
        )
    elif not args.quiet:
        print(report.table(), file=sys.stdout)
    return 0
