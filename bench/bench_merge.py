"""Speed and memory of `mergesmith merge` against a disk-copy floor and mergekit, in one run.

    python bench/bench_merge.py                          # 1b shape, 3 repeats, with mergekit
    python bench/bench_merge.py --shape both --json bench/out/result.json --markdown bench/out/result.md
    python bench/bench_merge.py --shape pico --repeat 1  # seconds: a smoke test of the bench
    python bench/bench_merge.py --shape both --mergekit-shapes 1b   # mergekit only where its targets are

What it does:
1. Generates (once, cached under bench/models/<shape>/) a seeded synthetic llama pair straight to
   bf16 safetensors: A, and B = A + noise. "1b" is TinyLlama-1.1B's shape (2.2 GB per model),
   "3b" OpenLLaMA-3B's (6.9 GB), "pico" a tiny one. See synthetic.py.
2. Reads every input file once, untimed: the page cache is warm for all jobs (dropping caches
   needs root, and a warm cache is what repeated merges see), so the numbers are CPU and write
   cost, not cold-disk reads.
3. Runs each job --repeat times, round-robin so that machine noise spreads over all jobs. Each
   job is one shell command ending in `sync`, so written bytes are on disk before the clock stops:
     floor             `cp -r --reflink=never A OUT && sync`: reading the input and writing the
                       same number of bytes, the least any merge must do (a real copy, no reflink)
     mergesmith slerp  t 0.5, base A                       `python -m mergesmith merge --quiet --force`
     mergesmith ties   base A, B: density 0.5, weight 0.5, normalize, int8_mask
     mergekit slerp/ties  the same recipe files with mergekit-yaml --no-cuda --quiet (if installed)
   plus `mergesmith --help`, `mergesmith plan` on the ties recipe and a pico ties merge.
   Wall time is measured here; CPU (user + sys) and peak RSS of the largest process in the tree
   come from GNU time -v, or getrusage(RUSAGE_CHILDREN) without it (see measure.py).
4. Checks the first output of every merge (see outputs.py): complete bf16 tensor set, sampled
   matrices equal to the formula, and agreement with mergekit within 1 ulp.
5. Prints the table, ratios and PASS/FAIL per target (report.py); --json / --markdown save them.
Outputs are deleted after every job. Exit status 1 when a job fails or a correctness check
fails; a missed speed or memory target is reported, not an error.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import measure
import outputs
import report
import synthetic

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
MODELS, OUT = BENCH / "models", BENCH / "out"
PY = shlex.quote(sys.executable)
MERGEKIT = Path(sys.executable).with_name("mergekit-yaml")
MERGE_METHODS = ("slerp", "ties")


@dataclass(frozen=True)
class Job:
    shape: str
    name: str
    shell: str
    out: Optional[Path] = None  # deleted before and after each run
    method: Optional[str] = None  # set for merges whose output is checked


def recipe(method: str, pair: synthetic.Pair) -> str:
    a, b = json.dumps(str(pair.a)), json.dumps(str(pair.b))
    if method == "slerp":
        return (
            f"models:\n  - model: {a}\n  - model: {b}\nmerge_method: slerp\nbase_model: {a}\n"
            f"parameters:\n  t: {outputs.SLERP_T}\ndtype: bfloat16\n"
        )
    return (
        f"models:\n  - model: {b}\n    parameters:\n      density: {outputs.TIES_DENSITY}\n"
        f"      weight: 0.5\nmerge_method: ties\nbase_model: {a}\n"
        f"parameters:\n  normalize: true\n  int8_mask: true\ndtype: bfloat16\n"
    )


def write_recipes(shape: str, pair: synthetic.Pair) -> dict[str, Path]:
    paths = {}
    for method in MERGE_METHODS:
        paths[method] = OUT / shape / f"{method}.yml"
        paths[method].parent.mkdir(parents=True, exist_ok=True)
        paths[method].write_text(recipe(method, pair))
    return paths


def merge_jobs(shape: str, pair: synthetic.Pair, recipes: dict[str, Path], mergekit: bool) -> list[Job]:
    def q(p: Path) -> str:
        return shlex.quote(str(p))

    floor_out = OUT / shape / "floor"
    jobs = [Job(shape, "floor", f"cp -r --reflink=never {q(pair.a)} {q(floor_out)} && sync", floor_out)]
    for method in MERGE_METHODS:
        out = OUT / shape / f"mergesmith-{method}"
        jobs.append(
            Job(
                shape,
                f"mergesmith {method}",
                f"{PY} -m mergesmith merge {q(recipes[method])} {q(out)} --quiet --force && sync",
                out,
                method,
            )
        )
    for method in MERGE_METHODS if mergekit else ():
        out = OUT / shape / f"mergekit-{method}"
        jobs.append(
            Job(
                shape,
                f"mergekit {method}",
                f"{q(MERGEKIT)} {q(recipes[method])} {q(out)} --no-cuda --quiet && sync",
                out,
                method,
            )
        )
    return jobs


def cli_jobs(plan_recipe: Path, pico_recipe: Path) -> list[Job]:
    pico_out = OUT / "pico" / "cli-merge"
    return [
        Job("cli", "mergesmith --help", f"{PY} -m mergesmith --help"),
        Job("cli", "mergesmith plan", f"{PY} -m mergesmith plan {shlex.quote(str(plan_recipe))}"),
        Job(
            "cli",
            "pico ties merge",
            f"{PY} -m mergesmith merge {shlex.quote(str(pico_recipe))} "
            f"{shlex.quote(str(pico_out))} --quiet --force && sync",
            pico_out,
        ),
    ]


def warm_page_cache(pair: synthetic.Pair) -> None:
    for path in sorted(p for d in (pair.a, pair.b) for p in d.iterdir()):
        with open(path, "rb") as f:
            while f.read(1 << 24):
                pass


def prepare(shape: str) -> synthetic.Pair:
    start = time.perf_counter()
    pair, generated = synthetic.ensure_pair(shape, MODELS)
    verb = "generated" if generated else "reusing"
    log(f"{shape}: {verb} {pair.a.parent} ({time.perf_counter() - start:.1f} s)")
    warm_page_cache(pair)
    os.sync()  # a fresh pair's write-back would otherwise land in the first job's `sync`
    return pair


def run_all(jobs: list[Job], repeat: int, how: str, layers: dict[str, int]) -> tuple[dict, dict]:
    """Every job ``repeat`` times, round-robin; the first output of each merge is snapshotted."""
    samples: dict[report.Key, list[measure.Sample]] = {(j.shape, j.name): [] for j in jobs}
    snapshots: dict[report.Key, outputs.Snapshot] = {}
    for round_ in range(repeat):
        for job in jobs:
            try:
                sample = measure.run_measured(job.shell, how, cwd=REPO)
                if job.method and round_ == 0:
                    snapshots[(job.shape, job.name)] = outputs.snapshot(job.out, layers[job.shape])
            finally:
                if job.out:
                    shutil.rmtree(job.out, ignore_errors=True)
            samples[(job.shape, job.name)].append(sample)
            log(
                f"  [{round_ + 1}/{repeat}] {job.shape} {job.name}: {sample.wall_s:.2f} s, "
                f"{sample.peak_rss_bytes / report.GB:.2f} GB"
            )
    return samples, snapshots


def checks_for(shape: str, pair: synthetic.Pair, snapshots: dict) -> list[outputs.Check]:
    layers = synthetic.SHAPES[shape].layers
    a, b = outputs.snapshot(pair.a, layers), outputs.snapshot(pair.b, layers)
    found = []
    for method in MERGE_METHODS:
        found += [
            outputs.Check(f"{shape} {c.name}", c.passed, c.detail)
            for c in outputs.check_merge(
                method, snapshots[(shape, f"mergesmith {method}")], a, b, snapshots.get((shape, f"mergekit {method}"))
            )
        ]
    return found


def versions(mergekit: bool) -> str:
    from importlib.metadata import version

    import torch

    commit = (
        subprocess.run(
            ["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True, text=True
        ).stdout.strip()
        or "unknown"
    )
    mk = f", mergekit {version('mergekit')}" if mergekit else ""
    return f"mergesmith {commit}, torch {torch.__version__}{mk}"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--shape",
        choices=("pico", "1b", "3b", "both"),
        default="1b",
        help="model shape to merge; both = 1b and 3b (default 1b)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per job; median and range reported")
    parser.add_argument("--skip-mergekit", action="store_true", help="do not run mergekit")
    parser.add_argument(
        "--mergekit-shapes",
        nargs="+",
        choices=("1b", "3b"),
        help="shapes mergekit runs on (default: every shape benchmarked; its targets are on 1b)",
    )
    parser.add_argument("--json", type=Path, help="write the results as JSON here")
    parser.add_argument("--markdown", type=Path, help="write a Markdown table here (for the README)")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    shapes = ["1b", "3b"] if args.shape == "both" else [args.shape]
    mergekit = not args.skip_mergekit and MERGEKIT.is_file()
    if not args.skip_mergekit and not mergekit:
        log(f"mergekit-yaml not found next to {sys.executable}: mergekit jobs skipped")
    how = measure.probe()
    try:
        mergekit_shapes = set(args.mergekit_shapes or shapes) if mergekit else set()
        stats, checks = run_shapes(shapes, args.repeat, how, mergekit_shapes)
    except measure.JobFailed as failure:
        log(f"job failed: {failure}")
        return 1
    context = {
        "machine": report.machine(),
        "versions": versions(mergekit),
        "repeat": args.repeat,
        "probe": how,
        "shapes": shapes,
    }
    verdict = report.evaluate(stats, shapes)
    print(report.text(stats, verdict, checks))
    save(args, stats, verdict, checks, context)
    return 0 if all(c.passed for c in checks) else 1


def run_shapes(shapes: list[str], repeat: int, how: str, mergekit_shapes: set[str]) -> tuple[dict, list]:
    stats: dict[report.Key, report.Stats] = {}
    checks: list[outputs.Check] = []
    recipes = {}
    for shape in ["pico"] + [s for s in shapes if s != "pico"]:
        pair = prepare(shape)
        recipes[shape] = write_recipes(shape, pair)
        if shape not in shapes:
            continue
        jobs = merge_jobs(shape, pair, recipes[shape], shape in mergekit_shapes)
        samples, snapshots = run_all(jobs, repeat, how, {shape: synthetic.SHAPES[shape].layers})
        stats.update({key: report.Stats.of(s) for key, s in samples.items()})
        checks += checks_for(shape, pair, snapshots)
    samples, _ = run_all(cli_jobs(recipes[shapes[-1]]["ties"], recipes["pico"]["ties"]), repeat, how, {})
    stats.update({key: report.Stats.of(s) for key, s in samples.items()})
    return stats, checks


def save(args: argparse.Namespace, stats: dict, verdict: report.Verdict, checks: list, context: dict) -> None:
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report.as_json(stats, verdict, checks, context), indent=2) + "\n")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(report.markdown(stats, verdict, checks, context))


if __name__ == "__main__":
    sys.exit(main())
