"""Speed and memory of `mergesmith inspect B --base A` on a synthetic pair, against a copy floor.

    python bench/bench_inspect.py                  # 1b shape (TinyLlama-1.1B's, 2.2 GB per model), one run
    python bench/bench_inspect.py --shape pico     # seconds: a smoke test of the bench

What it does:
1. Generates (once, cached under bench/models/<shape>/) the seeded synthetic llama pair A and
   B = A + noise (synthetic.py, shared with bench_merge.py), and reads both once, untimed, so the
   page cache is warm for both jobs: the numbers are CPU cost, not cold-disk reads.
2. Runs each job once (the brief: one heavy run), measured by measure.py (wall; CPU and peak RSS
   of the largest process from GNU time -v, else getrusage):
     floor    `cp -r --reflink=never A B OUT && sync`: reading every byte inspect reads (both
              models) and writing as many, the least a pass over both inputs costs
     inspect  `mergesmith inspect B --base A --json OUT/inspect.json --quiet`
3. Checks the JSON: one row per tensor of A, and for a sampled matrix the delta norm, the top-k
   energy (exact singular values here; inspect's svd_lowrank estimate is a lower bound, loosest
   on this pure-noise delta) and the sign agreement against plain torch.
4. Prints the table, the ratios and PASS/FAIL for the targets: peak RSS under 1 GB, wall at most
   5x the floor. Exit status 1 when a job or a check fails; a missed target is reported.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import time
from pathlib import Path

import measure
import synthetic

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
MODELS, OUT = BENCH / "models", BENCH / "out"
PY = shlex.quote(sys.executable)
RSS_MAX, FLOOR_MAX = 1e9, 5.0
SAMPLE = "model.layers.0.mlp.down_proj.weight"
# Until `inspect` is registered in mergesmith/cli/main.py: the same handler through its own parser.
_CHILD = (
    "import argparse, sys; from mergesmith.cli import inspect_cmd; p = argparse.ArgumentParser(); "
    "inspect_cmd.add_parser(p.add_subparsers()); a = p.parse_args(['inspect', *sys.argv[1:]]); "
    "sys.exit(a.handler(a))"
)


def inspect_command() -> str:
    from mergesmith.cli import inspect_cmd, main

    if inspect_cmd in main.COMMANDS:
        return f"{PY} -m mergesmith inspect"
    return f"{PY} -c {shlex.quote(_CHILD)}"


def jobs(pair: synthetic.Pair, out: Path) -> dict[str, str]:
    q = lambda p: shlex.quote(str(p))
    floor = out / "floor"
    floor.mkdir(parents=True, exist_ok=True)
    return {
        "floor": f"cp -r --reflink=never {q(pair.a)} {q(pair.b)} {q(floor)} && sync",
        "inspect": f"{inspect_command()} {q(pair.b)} --base {q(pair.a)} --json {q(out / 'inspect.json')} --quiet",
    }


def warm(pair: synthetic.Pair) -> None:
    for path in sorted(p for d in (pair.a, pair.b) for p in d.iterdir()):
        with open(path, "rb") as f:
            while f.read(1 << 24):
                pass


def _load(model: Path, name: str):
    from safetensors import safe_open

    index = model / "model.safetensors.index.json"
    file = json.loads(index.read_text())["weight_map"][name] if index.is_file() else "model.safetensors"
    with safe_open(str(model / file), "pt") as f:
        return f.get_tensor(name).double()


def check(pair: synthetic.Pair, out: Path) -> list[tuple[str, bool, str]]:
    import torch

    data = json.loads((out / "inspect.json").read_text())
    row = next(r for r in data["rows"] if r["name"] == SAMPLE)
    a, b = _load(pair.a, SAMPLE), _load(pair.b, SAMPLE)
    delta = b - a
    norm = float(delta.norm() / a.norm())
    s = torch.linalg.svdvals(delta)
    energy = float(s[: data["top_k"]].square().sum() / s.square().sum())
    names = set(_names(pair.a))
    return [
        (
            "every tensor of A has a row",
            {r["name"] for r in data["rows"]} == names,
            f"{len(data['rows'])} of {len(names)}",
        ),
        (
            f"{SAMPLE} delta norm",
            abs(row["delta_norm"][0] - norm) < 1e-5 * norm,
            f"{row['delta_norm'][0]:.6g} vs {norm:.6g}",
        ),
        # B - A is pure noise: a flat spectrum, the sketch's worst case (stats.topk_energy)
        (
            f"{SAMPLE} top-k energy: a lower bound, at least 70% of exact on noise",
            energy * 0.7 <= row["topk_energy"][0] <= energy + 1e-6,
            f"{row['topk_energy'][0]:.4g} vs exact {energy:.4g}",
        ),
        (f"{SAMPLE} sign agreement with itself", row["sign_agreement"] == [[1.0]], str(row["sign_agreement"])),
    ]


def _names(model: Path) -> list[str]:
    from safetensors import safe_open

    names = []
    for file in sorted(model.glob("*.safetensors")):
        with safe_open(str(file), "pt") as f:
            names += list(f.keys())
    return names


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", choices=("pico", "1b", "3b"), default="1b")
    args = p.parse_args(argv)
    pair, generated = synthetic.ensure_pair(args.shape, MODELS)
    print(f"{args.shape}: {'generated' if generated else 'reusing'} {pair.a.parent}", file=sys.stderr)
    warm(pair)
    out = OUT / args.shape / "inspect"
    shutil.rmtree(out, ignore_errors=True)
    how, samples = measure.probe(), {}
    try:
        for name, shell in jobs(pair, out).items():
            start = time.perf_counter()
            samples[name] = measure.run_measured(shell, how, cwd=REPO)
            print(f"  {name}: {time.perf_counter() - start:.1f} s", file=sys.stderr)
        checks = check(pair, out)
    except measure.JobFailed as failure:
        print(f"job failed: {failure}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(out / "floor", ignore_errors=True)
    print(render(args.shape, samples, checks))
    return 0 if all(ok for _, ok, _ in checks) else 1


def render(shape: str, samples: dict, checks: list) -> str:
    floor, run = samples["floor"], samples["inspect"]
    lines = [
        f"shape {shape}, one run each ({measure.probe()})",
        f"{'job':<10}{'wall s':>10}{'cpu s':>10}{'peak RSS GB':>14}",
    ]
    lines += [
        f"{name:<10}{s.wall_s:>10.2f}{s.cpu_s:>10.1f}{s.peak_rss_bytes / 1e9:>14.3f}" for name, s in samples.items()
    ]
    ratio = run.wall_s / floor.wall_s
    if shape == "pico":  # start-up dominated: the targets are for real sizes
        lines += ["", f"inspect / floor wall: {ratio:.2f}x (pico: no target)"]
    else:
        lines += [
            "",
            f"inspect / floor wall: {ratio:.2f}x (target <= {FLOOR_MAX:g}x): {'PASS' if ratio <= FLOOR_MAX else 'FAIL'}",
            f"inspect peak RSS: {run.peak_rss_bytes / 1e9:.3f} GB (target < 1 GB): "
            f"{'PASS' if run.peak_rss_bytes < RSS_MAX else 'FAIL'}",
        ]
    lines += [f"check {'PASS' if ok else 'FAIL'}: {name} ({detail})" for name, ok, detail in checks]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
