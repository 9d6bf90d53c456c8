"""``mergesmith eval MODEL [MODEL ...]``: perplexity, KL vs ``--ref`` and multiple choice, ranked."""

from __future__ import annotations

from mergesmith.cli.events import add_log_format


def add_parser(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="score models: perplexity, bits per byte, KL vs a reference, multiple choice",
        description="Score models on texts and multiple-choice tasks; print them best first.",
        epilog="Models are Hugging Face directories or .gguf files. Without --text, --tasks and --lm-eval, the "
        "bundled held-out texts and tasks in data/ are used. The terminal shows a block per text and per "
        "group of tasks; --json writes every number.",
    )
    p.add_argument("models", nargs="+", metavar="MODEL", help="Hugging Face model directories or .gguf files")
    p.add_argument(
        "--ref", help="reference model: the baseline row, and KL / top-1 agreement / Δ perplexity against it"
    )
    p.add_argument(
        "--text",
        nargs="+",
        metavar="FILE|NAME",
        help=f"UTF-8 text files, or bundled text names ({_bundled_texts()}), for perplexity",
    )
    p.add_argument(
        "--tasks", nargs="+", metavar="FILE|NAME", help="multiple-choice tasks: JSONL files or bundled task names"
    )
    p.add_argument(
        "--lm-eval",
        nargs="+",
        metavar="TASK|YAML|DIR",
        help="lm-eval-harness tasks: registry names, task YAML files or directories of them "
        "(data_files relative to the YAML); needs pip install 'mergesmith[lmeval]'",
    )
    p.add_argument("--json", metavar="OUT", help="also write the results as JSON (input of `mergesmith card --eval`)")
    p.add_argument(
        "--context", type=int, metavar="N", help="tokens per window (default: 1024, or less if a model is shorter)"
    )
    p.add_argument("--stride", type=int, metavar="N", help="tokens between window ends (default: context / 2)")
    p.add_argument("--batch-size", type=int, default=4, metavar="N", help="windows per forward pass (default 4)")
    p.add_argument(
        "--fewshot", type=int, default=0, metavar="K", help="solved examples before each question (default 0)"
    )
    p.add_argument(
        "--dtype", default="float32", help="float32 (default), bfloat16 or float16; .gguf files keep their own types"
    )
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu (default), cuda")
    p.add_argument(
        "--limit",
        type=int,
        metavar="N",
        help="only the first N windows per text and N items per task (default: all; for quick checks)",
    )
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run the code a model ships with (config.json auto_map) to load it; only for sources you trust",
    )
    p.add_argument("--quiet", action="store_true", help="no progress output")
    add_log_format(p)
    p.set_defaults(handler=run)


def _bundled_texts() -> str:
    """Names only: listing data/text costs a directory read, not an import of the evaluation code."""
    from mergesmith.eval.data import bundled_text_names

    return ", ".join(bundled_text_names()) or "none installed"


def run(args) -> int:
    from mergesmith.eval.api import evaluate
    from mergesmith.eval.render import gguf_types, render_table
    from mergesmith.eval.results import check_results_path, save_results

    if args.json:
        check_results_path(args.json)  # before the models are scored, not after
    result = evaluate(
        args.models,
        ref=args.ref,
        texts=args.text,
        tasks=args.tasks,
        context=args.context,
        stride=args.stride,
        batch_size=args.batch_size,
        fewshot=args.fewshot,
        dtype=args.dtype,
        device=args.device,
        limit=args.limit,
        progress=args.log.progress,
        lm_eval=args.lm_eval,
        trust_remote_code=args.trust_remote_code,
    )
    if args.json:
        save_results(result, args.json)
    types = gguf_types([m.model for m in result.models])
    args.log.result(None if args.log.json else render_table(result, types=types), types=types, **result.to_dict())
    return 0
