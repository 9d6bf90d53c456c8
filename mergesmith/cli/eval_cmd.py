"""``mergesmith eval MODEL [MODEL ...]``: perplexity, KL vs ``--ref`` and multiple choice, ranked."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser(
        "eval", help="score models: perplexity, bits per byte, KL vs a reference, multiple choice",
        description="Score Hugging Face model directories and print them ranked, best first. Without "
        "--text and --tasks, the bundled held-out texts and tasks in data/ are used.",
    )
    p.add_argument("models", nargs="+", metavar="MODEL", help="Hugging Face model directories or .gguf files")
    p.add_argument("--ref", help="reference model: the baseline row, and KL / top-1 agreement / Δ perplexity against it")
    p.add_argument("--text", nargs="+", metavar="FILE", help="UTF-8 text files for perplexity")
    p.add_argument("--tasks", nargs="+", metavar="NAME|FILE", help="multiple-choice tasks: bundled names or JSONL files")
    p.add_argument("--lm-eval", nargs="+", metavar="TASK|YAML|DIR",
                   help="lm-eval-harness tasks: registry names, task YAML files or directories of them "
                   "(data_files relative to the YAML); needs pip install 'mergesmith[lmeval]'")
    p.add_argument("--json", metavar="OUT", help="also write the results as JSON (input of `mergesmith card --eval`)")
    p.add_argument("--context", type=int, help="tokens per window (default: 1024, or less if a model is shorter)")
    p.add_argument("--stride", type=int, help="tokens between window ends (default: context / 2)")
    p.add_argument("--batch-size", type=int, default=4, help="windows per forward pass (default 4)")
    p.add_argument("--fewshot", type=int, default=0, help="solved examples before each question (default 0)")
    p.add_argument("--dtype", default="float32", help="float32 (default), bfloat16 or float16")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda")
    p.add_argument("--limit", type=int, help="only the first N windows per text and N items per task (quick checks)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=run)


def run(args) -> int:
    from mergesmith.eval.api import evaluate
    from mergesmith.eval.render import render_table
    from mergesmith.eval.results import check_results_path, save_results

    if args.json:
        check_results_path(args.json)   # before the models are scored, not after
    result = evaluate(
        args.models, ref=args.ref, texts=args.text, tasks=args.tasks, context=args.context, stride=args.stride,
        batch_size=args.batch_size, fewshot=args.fewshot, dtype=args.dtype, device=args.device,
        limit=args.limit, progress=not args.quiet, lm_eval=args.lm_eval,
    )
    print(render_table(result))
    if args.json:
        save_results(result, args.json)
    return 0
