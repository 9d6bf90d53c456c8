"""RegMean on the 1.1B synthetic models: the calibration stage's memory and the solve against the
`cp -r` + `sync` floor, in one run.

    python bench/bench_regmean.py                       # 16384 calibration tokens per model
    python bench/bench_regmean.py --tokens 2048         # fewer, on a busy machine (scale the time)
    python bench/bench_regmean.py --cache /dev/shm/grams --reuse-cache   # the solve alone, again
    python bench/bench_regmean.py --tokens 2048 --device cuda             # the solve on a GPU

``--cache`` puts the Gram cache elsewhere (7.8 GB: a RAM disk where the disk is short); with
``--reuse-cache`` a complete cache is kept and only floor and solve run.

Models (synthetic.py: TinyLlama's shape, bf16, no tokenizer): the base A of the synthetic pair and
the two "LoRA fine-tunes" C, D = A + B_i·A_i of bench_subspace.py (rank 16 on the seven projections
of every layer, bf16: what merges of specialists see), hard-linked file by file into
bench/out/regmean/<shape>/{a,c,d} beside a small byte-level tokenizer (tests/pico.py's; token ids
stay inside the vocabulary). The recipe merges C and D against the base A, C calibrated on the
bundled kjv_train text and D on austen_train: two models calibrate (3.9 GB of float32 Grams each
at this shape), and the solve of every linear weight does the work of two distinct models (their
weights differ on every projection, so no weight is given back without a solve). Jobs, each one
shell command ending in `sync`, measured by measure.py (wall, CPU, peak RSS):
  floor         `cp -r` of one input + `sync`
  calibrate     the calibration stage alone (mergesmith.calibrate, as `mergesmith merge` runs it)
                into an empty cache: each model, layer by layer, over --tokens tokens, then `sync`
  solve         `mergesmith merge` with that cache: every Gram read, no model run; the solve of
                every linear weight and the average of the other tensors
  arithmetic    no command: the least arithmetic any exact solve does, timed in this process on
                random matrices of one layer's shapes (float32, as a bf16 output's solve runs) and
                multiplied by the layer count: per Gram one Cholesky factor (q/k/v share one, so
                do gate/up), per weight one `[in, in] x [in, out]` product and the two triangular
                solves, or where the group's outputs outnumber its inputs `M⁻¹G̃` once and one
                product per weight (fewer flops); no IO, nothing else. It bounds what the solve
                can reach on this machine.
Peak RSS of `calibrate` is set by one decoder layer in float32, its float64 Gram sums, the hidden
states of all windows and the embeddings; it is printed beside the size of one layer and of the
whole model in float32.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import statistics
import sys
from pathlib import Path

import measure
import synthetic

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
MODELS, OUT = BENCH / "models", BENCH / "out" / "regmean"
PY = shlex.quote(sys.executable)


def linked_models(shape: str) -> tuple[Path, Path, Path]:
    """A, C and D's files hard-linked beside a tokenizer (the synthetic models ship none)."""
    sys.path.insert(0, str(REPO / "tests"))
    from bench_subspace import ensure_lora
    from pico import build_tokenizer

    pair, _ = synthetic.ensure_pair(shape, MODELS)
    c, d = ensure_lora(shape)
    dirs = []
    for name, src in (("a", pair.a), ("c", c), ("d", d)):
        dst = OUT / shape / name
        if not (dst / "tokenizer.json").is_file():
            shutil.rmtree(dst, ignore_errors=True)
            dst.mkdir(parents=True)
            for file in src.iterdir():  # hard links: mergesmith reads no symlink leaving the folder
                if file.name != synthetic.MARKER:
                    os.link(file, dst / file.name)
            build_tokenizer().save_pretrained(dst)
        dirs.append(dst)
    return dirs[0], dirs[1], dirs[2]


def recipe(a: Path, c: Path, d: Path, tokens: int) -> Path:
    path = OUT / "regmean.yml"
    path.write_text(
        f"models:\n  - model: {json.dumps(str(c))}\n    parameters: {{calibration: kjv_train}}\n"
        f"  - model: {json.dumps(str(d))}\n    parameters: {{calibration: austen_train}}\n"
        f"base_model: {json.dumps(str(a))}\nmerge_method: regmean\n"
        f"parameters:\n  calibration_tokens: {tokens}\n  alpha: 0.9\n"
        "dtype: bfloat16\n"
    )
    return path


def sizes(shape: synthetic.Shape) -> tuple[float, float]:
    """(one decoder layer, whole model) in float32 GB."""
    shapes = synthetic.tensor_shapes(shape)
    layer = sum(_numel(s) for n, s in shapes.items() if n.startswith("model.layers.0."))
    return layer * 4 / 1e9, sum(_numel(s) for s in shapes.values()) * 4 / 1e9


def _numel(shape) -> int:
    count = 1
    for d in shape:
        count *= d
    return count


def arithmetic_floor(shape: synthetic.Shape, device: str = "cpu", repeat: int = 2) -> float:
    """Seconds of the arithmetic alone for every layer's solve (see the module docstring): best of
    ``repeat`` timings of one layer, times the layer count."""
    import time

    import torch

    kv = shape.kv_heads * (shape.hidden // shape.heads)
    groups = (  # (in, the outs of the weights that read that input's Gram)
        (shape.hidden, (shape.hidden, kv, kv)),
        (shape.hidden, (shape.hidden,)),
        (shape.hidden, (shape.intermediate, shape.intermediate)),
        (shape.intermediate, (shape.hidden,)),
    )
    g = torch.Generator().manual_seed(0)
    sync = torch.cuda.synchronize if device.startswith("cuda") else lambda: None
    best = math.inf
    for _ in range(repeat):
        took = 0.0
        for features, outs in groups:
            x = torch.randn(features, features, generator=g).to(device)
            spd = x @ x.T + features * torch.eye(features, device=device)
            rhs = [torch.randn(features, out, generator=g).to(device) for out in outs]
            sync()
            start = time.perf_counter()
            factor = torch.linalg.cholesky(spd)
            if features < sum(outs):  # M⁻¹ G̃ first, shared by the group's weights: fewer flops
                mixed = torch.cholesky_solve(spd, factor)
                for r in rhs:
                    mixed @ r
            else:
                for r in rhs:
                    torch.cholesky_solve(spd @ r, factor)
            sync()
            took += time.perf_counter() - start
        best = min(best, took)
    return best * shape.layers


def calibrate_only(recipe_path: str, cache: str) -> None:
    """The calibration stage of the recipe into ``cache``, as a merge runs it, and nothing else."""
    from mergesmith.api import model_keys, read_recipe
    from mergesmith.calibrate.stage import statistics_inputs
    from mergesmith.execute.memory import release_freed_tensors
    from mergesmith.io.resolve import close_models, open_models
    from mergesmith.plan.planner import build_plan

    release_freed_tensors()  # as `mergesmith merge` does for its process
    src = read_recipe(recipe_path)
    models = open_models(model_keys(src.recipe), base_dir=src.base_dir)
    try:
        plan = build_plan(src.recipe, models, source=src.name)
        with statistics_inputs(plan, models, src.base_dir, Path(cache)):
            pass
    finally:
        close_models(models)


def main(argv=None) -> int:
    if argv is None and sys.argv[1:2] == ["--calibrate-only"]:
        calibrate_only(*sys.argv[2:4])
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", choices=("1b",), default="1b", help="synthetic shape (the tokenizer needs 300 ids)")
    p.add_argument("--tokens", type=int, default=16384, help="calibration tokens per model (default 16384)")
    p.add_argument("--repeat", type=int, default=2, help="runs of floor and solve (cold runs once)")
    p.add_argument("--cache", type=Path, default=OUT / "cache", help="the Gram cache (default bench/out/regmean/cache)")
    p.add_argument("--reuse-cache", action="store_true", help="keep a complete cache: no calibration run")
    p.add_argument("--device", default="cpu", help="where the solve runs (the merge's --device; calibration: cpu)")
    args = p.parse_args(argv)
    a, c, d = linked_models(args.shape)
    how, cache, out, floor = measure.probe(), args.cache, OUT / "merged", OUT / "floor"
    merge = f"{PY} -m mergesmith merge {shlex.quote(str(recipe(a, c, d, args.tokens)))} {shlex.quote(str(out))}"
    merge += (
        f" --quiet --force --device {shlex.quote(args.device)} --calibration-cache {shlex.quote(str(cache))} && sync"
    )
    copy = f"cp -r --reflink=never {shlex.quote(str(a))} {shlex.quote(str(floor))} && sync"
    calibrate = f"{PY} {shlex.quote(__file__)} --calibrate-only {shlex.quote(str(OUT / 'regmean.yml'))} "
    calibrate += f"{shlex.quote(str(cache))} && sync"
    results: dict[str, list] = {}
    if not (args.reuse_cache and any(cache.glob("*/calibration.json"))):
        shutil.rmtree(cache, ignore_errors=True)
        results["calibrate"] = [measure.run_measured(calibrate, how, REPO)]
    results["floor"], results["solve"] = [], []
    for _ in range(args.repeat):
        shutil.rmtree(floor, ignore_errors=True)
        results["floor"].append(measure.run_measured(copy, how, REPO))
        shutil.rmtree(floor, ignore_errors=True)  # disk: the cache and the output are large already
        results["solve"].append(measure.run_measured(merge, how, REPO))
    shutil.rmtree(floor, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    arithmetic = arithmetic_floor(synthetic.SHAPES[args.shape], args.device)
    layer, whole = sizes(synthetic.SHAPES[args.shape])
    print(
        f"shape {args.shape}, {args.tokens} calibration tokens, 2 models calibrated and merged; one layer {layer:.2f} GB "
        f"and the whole model {whole:.2f} GB in float32"
    )
    print("| job | wall s (median) | CPU s | peak RSS GB |\n|---|---|---|---|")
    med = {k: statistics.median(s.wall_s for s in v) for k, v in results.items()}
    for name, samples in results.items():
        cpu = statistics.median(s.cpu_s for s in samples)
        rss = max(s.peak_rss_bytes for s in samples) / 1e9
        print(f"| {name} | {med[name]:.2f} ({', '.join(f'{s.wall_s:.2f}' for s in samples)}) | {cpu:.1f} | {rss:.2f} |")
    if "calibrate" in med:
        calibration = med["calibrate"] / 2
        print(f"calibration per model {calibration:.1f} s ({calibration / args.tokens * 1000:.2f} s per 1000 tokens)")
    print(f"solve / floor = {med['solve'] / med['floor']:.2f}x (target ≤ 10x)")
    print(
        f"arithmetic alone (one factor per Gram, one product and two triangular solves per weight, "
        f"float32 on {args.device}, no IO): {arithmetic:.1f} s = {arithmetic / med['floor']:.1f}x the floor"
    )
    entry_gb = sum(f.stat().st_size for f in cache.rglob("*.safetensors")) / 1e9
    print(f"cache on disk: {entry_gb:.2f} GB (two models)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
