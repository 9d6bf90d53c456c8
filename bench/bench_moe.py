"""Speed and memory of `mergesmith moe` against mergekit-moe 0.1.5 on the same inputs, in one run.

    python bench/bench_moe.py                    # 1b shape, 1 repeat
    python bench/bench_moe.py --repeat 3 --json bench/out/moe.json

The inputs are the synthetic pair of bench_merge.py (synthetic.py: "1b" is TinyLlama-1.1B's shape,
bf16, A and B = A + noise), seen through folders of hard links that add the pico byte-level
tokenizer (tests/pico.py; its ids fit any vocabulary), since routing by prompts needs one. The
config: base A, experts A and B, two prompts each, bf16, under gate_mode hidden (a forward pass
of the base) and cheap_embed (no forward pass: reading and writing only). Jobs, round-robin,
each ending in `sync` so written bytes are on disk before the clock stops:

    floor           `cp -r --reflink=never A OUT && sync` (reads and writes A's bytes once)
    mergesmith moe  `python -m mergesmith moe CONFIG OUT --quiet --force`
    mergekit-moe    `mergekit-moe CONFIG OUT --device cpu --quiet` (the same file)

Every input file is read once first, untimed (a warm page cache for every job, as in
bench_merge.py). Wall time here; CPU and peak RSS of the largest process from GNU time -v (measure.py). Then the
outputs are compared: every copied tensor of mergekit's (its fused expert tensors split per
expert) bit-identical to mergesmith's, routers within 0.02 (mergekit's hidden states are bf16).
Targets: mergesmith at least 4x faster and at most 1/3 of mergekit-moe's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
from pathlib import Path

import measure
import synthetic

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
MODELS, OUT = BENCH / "models", BENCH / "out" / "moe"
PY = shlex.quote(sys.executable)
MERGEKIT_MOE = Path(sys.executable).with_name("mergekit-moe")
PROMPTS = {
    "a": ["The quick brown fox jumps over the lazy dog.", "Small models train quickly."],
    "b": ["Hello world! How are you today?", "Numbers like 1, 2, 3 and 42 appear in text too."],
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def with_tokenizer(model: Path, dest: Path) -> Path:
    """``dest``: ``model``'s files as hard links (mergesmith refuses symlinks leaving a model
    folder), plus the pico tokenizer."""
    sys.path.insert(0, str(REPO / "tests"))
    from pico import build_tokenizer

    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for file in model.iterdir():
        os.link(file, dest / file.name)
    build_tokenizer().save_pretrained(dest)
    return dest


def write_configs(pair: synthetic.Pair) -> dict[str, Path]:
    """The same config under gate_mode hidden (a forward pass of the base) and cheap_embed (none:
    what remains is reading and writing tensors)."""
    a = with_tokenizer(pair.a, OUT / "inputs" / "a")
    b = with_tokenizer(pair.b, OUT / "inputs" / "b")
    configs = {}
    for mode in ("hidden", "cheap_embed"):
        lines = [f"base_model: {a}", f"gate_mode: {mode}", "dtype: bfloat16", "experts_per_token: 2", "experts:"]
        for model, key in ((a, "a"), (b, "b")):
            lines += [f"  - source_model: {model}", f"    positive_prompts: {json.dumps(PROMPTS[key])}"]
        configs[mode] = OUT / f"moe-{mode}.yml"
        configs[mode].write_text("\n".join(lines) + "\n")
    return configs


def jobs(pair: synthetic.Pair, configs: dict[str, Path]) -> list[tuple[str, str, Path]]:
    q = shlex.quote
    found = [("floor", f"cp -r --reflink=never {q(str(pair.a))} {q(str(OUT / 'floor'))} && sync", OUT / "floor")]
    for mode, config in configs.items():
        ours, theirs = OUT / f"ours-{mode}", OUT / f"mergekit-{mode}"
        found += [
            (
                f"mergesmith moe ({mode})",
                f"{PY} -m mergesmith moe {q(str(config))} {q(str(ours))} --quiet --force && sync",
                ours,
            ),
            (
                f"mergekit-moe ({mode})",
                f"{q(str(MERGEKIT_MOE))} {q(str(config))} {q(str(theirs))} --device cpu --quiet && sync",
                theirs,
            ),
        ]
    return found


def compare(ours: Path, theirs: Path) -> tuple[int, float]:
    """(copied tensors compared, all bit-identical or an exception), largest router difference."""
    sys.path.insert(0, str(REPO / "tests"))
    from reference import load_dir

    mine, other = load_dir(ours), load_dir(theirs)
    compared, router = 0, 0.0
    for name, tensor in other.items():
        prefix = name.rsplit(".mlp.", 1)[0]
        if name.endswith("mlp.experts.gate_up_proj"):
            size = tensor.shape[1] // 2
            pairs = [(mine[f"{prefix}.block_sparse_moe.experts.{e}.w1.weight"], tensor[e, :size]) for e in range(2)]
            pairs += [(mine[f"{prefix}.block_sparse_moe.experts.{e}.w3.weight"], tensor[e, size:]) for e in range(2)]
        elif name.endswith("mlp.experts.down_proj"):
            pairs = [(mine[f"{prefix}.block_sparse_moe.experts.{e}.w2.weight"], tensor[e]) for e in range(2)]
        elif name.endswith("mlp.gate.weight"):
            ours_router = mine[f"{prefix}.block_sparse_moe.gate.weight"].float()
            router = max(router, float((ours_router - tensor.float()).abs().max()))
            continue
        else:
            pairs = [(mine[name], tensor)]
        for a, b in pairs:
            if not (a.dtype == b.dtype and a.shape == b.shape and bool((a == b).all())):
                raise SystemExit(f"{name}: mergesmith's copy differs from mergekit-moe's")
            compared += 1
    return compared, router


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    # Only 1b: the pico pair's 256-row vocabulary is smaller than the pico tokenizer's.
    parser.add_argument("--shape", choices=("1b",), default="1b")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    pair, _ = synthetic.ensure_pair(args.shape, MODELS)
    all_jobs = jobs(pair, write_configs(pair))
    for path in sorted(p for d in (pair.a, pair.b) for p in d.iterdir()):  # warm cache: as bench_merge.py
        with open(path, "rb") as f:
            while f.read(1 << 24):
                pass
    how = measure.probe()
    samples: dict[str, list[measure.Sample]] = {}
    for round_ in range(args.repeat):
        for name, shell, out in all_jobs:
            shutil.rmtree(out, ignore_errors=True)
            sample = measure.run_measured(shell, how, cwd=REPO)
            samples.setdefault(name, []).append(sample)
            log(f"[{round_ + 1}/{args.repeat}] {name}: {sample.wall_s:.1f} s, {sample.peak_rss_bytes / 1e9:.2f} GB")
    best = {name: min(s, key=lambda x: x.wall_s) for name, s in samples.items()}
    lines = ["| job | wall s | CPU s | peak RSS GB |", "|---|---|---|---|"]
    lines += [f"| {n} | {s.wall_s:.1f} | {s.cpu_s:.1f} | {s.peak_rss_bytes / 1e9:.2f} |" for n, s in best.items()]
    result: dict = {n: s.__dict__ for n, s in best.items()}
    for mode in ("hidden", "cheap_embed"):
        ours, theirs = best[f"mergesmith moe ({mode})"], best[f"mergekit-moe ({mode})"]
        speed, memory = theirs.wall_s / ours.wall_s, ours.peak_rss_bytes / theirs.peak_rss_bytes
        compared, router = compare(OUT / f"ours-{mode}", OUT / f"mergekit-{mode}")
        result[mode] = {"speed": speed, "memory": memory, "router": router, "compared": compared}
        lines += [
            f"{mode}: speed mergekit-moe / mergesmith = {speed:.2f}x (target >= 4): {'PASS' if speed >= 4 else 'MISS'}; "
            f"memory mergesmith / mergekit-moe = {memory:.2f} (target <= 0.33): {'PASS' if memory <= 1 / 3 else 'MISS'}",
            f"{mode}: {compared} copied tensors bit-identical to mergekit-moe's; routers differ by at most {router:.4f}",
        ]
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    for _, _, out in all_jobs:
        shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
