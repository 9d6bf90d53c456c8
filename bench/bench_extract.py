"""Speed, memory and accuracy of LoRA extraction against mergekit-extract-lora, in one run.

    python bench/bench_extract.py                        # 1b pair, rank 64, with mergekit
    python bench/bench_extract.py --shape pico --rank 8  # seconds: a smoke test of the bench
    python bench/bench_extract.py --no-mergekit          # ours only

What it does:
1. Reuses (or generates, see synthetic.py) the seeded synthetic llama pair bench/models/<shape>/:
   A, and B = A + noise on every tensor, and reads both once, untimed (warm page cache), as
   bench_merge.py does.
2. Runs, once each (mergekit's exact SVDs take most of an hour on 2 cores at 1b):
     mergesmith   extract_lora(B, A, OUT, max_rank=R)  in a fresh Python process
     mergekit     mergekit-extract-lora --model B --base-model A --out-path OUT --max-rank R --no-cuda --quiet
   measuring wall time, CPU time (user + sys) and peak RSS of the process tree (measure.py).
3. Accuracy on sample matrices (first and last layer: q_proj, k_proj, down_proj): relative
   Frobenius error ‖Δ − B·A‖ / ‖Δ‖ of each tool's factors, and the optimum (exact SVD) where it
   is affordable. Noise deltas have a flat spectrum, the hardest case for the randomized SVD.
4. Prints the table and the ratios against the targets: ≥ 4x faster, ≤ 1/3 of mergekit's peak RSS.
Outputs are deleted after the run (--keep keeps them). A missed target is reported, not an error.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
from pathlib import Path

import measure
import synthetic
import torch
from bench_merge import MODELS, OUT, PY, REPO, prepare
from safetensors import safe_open

MERGEKIT = Path(sys.executable).with_name("mergekit-extract-lora")
TARGET_SPEEDUP, TARGET_RSS = 4.0, 1 / 3
SAMPLES = ("self_attn.q_proj", "self_attn.k_proj", "mlp.down_proj")


def commands(pair: synthetic.Pair, rank: int, out: Path, mergekit: bool) -> dict[str, tuple[str, Path]]:
    q = lambda p: shlex.quote(str(p))  # noqa: E731
    ours = out / "mergesmith"
    call = (
        f"from mergesmith.extract import extract_lora; "
        f"extract_lora({str(pair.b)!r}, {str(pair.a)!r}, {str(ours)!r}, max_rank={rank}, force=True)"
    )
    jobs = {"mergesmith": (f"{PY} -c {q(call)} && sync", ours)}
    if mergekit:
        theirs = out / "mergekit"
        jobs["mergekit"] = (
            f"{q(MERGEKIT)} --model {q(pair.b)} --base-model {q(pair.a)} --out-path {q(theirs)} "
            f"--max-rank {rank} --no-cuda --quiet && sync",
            theirs,
        )
    return jobs


def _tensor(folder: Path, name: str) -> torch.Tensor:
    index = folder / "model.safetensors.index.json"
    file = folder / (json.loads(index.read_text())["weight_map"][name] if index.is_file() else "model.safetensors")
    with safe_open(file, "pt") as f:
        return f.get_tensor(name)


def _product(adapter: Path, module: str) -> torch.Tensor:
    with safe_open(adapter / "adapter_model.safetensors", "pt") as f:
        a = f.get_tensor(f"base_model.model.{module}.lora_A.weight").float()
        b = f.get_tensor(f"base_model.model.{module}.lora_B.weight").float()
    return b @ a


def accuracy(pair: synthetic.Pair, layers: int, rank: int, outputs: dict[str, Path], optimum: bool) -> list[dict]:
    """Relative Frobenius error of each tool's B·A on the sample matrices (and the exact optimum)."""
    rows = []
    for layer in (0, layers - 1):
        for sample in SAMPLES:
            module = f"model.layers.{layer}.{sample}"
            delta = _tensor(pair.b, module + ".weight").float() - _tensor(pair.a, module + ".weight").float()
            row = {"module": module, "shape": list(delta.shape)}
            for tool, out in outputs.items():
                row[tool] = float((delta - _product(out, module)).norm() / delta.norm())
            if optimum:
                s = torch.linalg.svdvals(delta.double())
                row["optimum"] = float((s[rank:].square().sum() / s.square().sum()).sqrt())
            rows.append(row)
    return rows


def table(samples: dict[str, measure.Sample], sizes: dict[str, int]) -> str:
    lines = ["| tool | wall s | CPU s | peak RSS GB | adapter MB |", "|---|---|---|---|---|"]
    for tool, s in samples.items():
        lines.append(
            f"| {tool} | {s.wall_s:.1f} | {s.cpu_s:.1f} | {s.peak_rss_bytes / 1e9:.2f} | {sizes[tool] / 1e6:.1f} |"
        )
    return "\n".join(lines)


def verdict(samples: dict[str, measure.Sample]) -> list[str]:
    if "mergekit" not in samples:
        return []
    ours, theirs = samples["mergesmith"], samples["mergekit"]
    speed, cpu, rss = (
        theirs.wall_s / ours.wall_s,
        theirs.cpu_s / ours.cpu_s,
        ours.peak_rss_bytes / theirs.peak_rss_bytes,
    )
    return [
        f"wall: mergesmith {speed:.1f}x faster (target >= {TARGET_SPEEDUP:g}x): {'PASS' if speed >= TARGET_SPEEDUP else 'FAIL'}",
        f"CPU: mergesmith uses 1/{cpu:.1f} of mergekit's CPU time",
        f"peak RSS: mergesmith {rss:.2f} of mergekit's (target <= {TARGET_RSS:.2f}): {'PASS' if rss <= TARGET_RSS else 'FAIL'}",
    ]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="1b", choices=sorted(synthetic.SHAPES))
    p.add_argument("--rank", type=int, default=64)
    p.add_argument("--no-mergekit", action="store_true", help="measure mergesmith only")
    p.add_argument("--no-optimum", action="store_true", help="skip the exact SVDs of the sample matrices")
    p.add_argument("--json", type=Path, help="also write the numbers here")
    p.add_argument("--keep", action="store_true", help="keep the adapters under bench/out/<shape>/extract")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    mergekit = not args.no_mergekit and MERGEKIT.is_file()
    pair = prepare(args.shape)
    out = OUT / args.shape / "extract"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    how, samples, sizes, outputs = measure.probe(), {}, {}, {}
    try:
        for tool, (shell, folder) in commands(pair, args.rank, out, mergekit).items():
            print(f"running {tool} ...", file=sys.stderr, flush=True)
            samples[tool] = measure.run_measured(shell, how, cwd=REPO)
            sizes[tool] = (folder / "adapter_model.safetensors").stat().st_size
            outputs[tool] = folder
        layers = synthetic.SHAPES[args.shape].layers
        rows = accuracy(pair, layers, args.rank, outputs, not args.no_optimum)
    finally:
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    print(f"extract-lora, {args.shape} synthetic pair ({MODELS / args.shape}), rank {args.rank}, probe {how}")
    print(table(samples, sizes))
    print("\nrelative Frobenius error ‖Δ − B·A‖ / ‖Δ‖ on sample matrices:")
    for row in rows:
        print("  " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
    for line in verdict(samples):
        print(line)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "shape": args.shape,
                    "rank": args.rank,
                    "sizes": sizes,
                    "accuracy": rows,
                    "samples": {t: vars(s) for t, s in samples.items()},
                },
                indent=2,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
