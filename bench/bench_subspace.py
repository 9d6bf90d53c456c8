"""Speed and memory of the subspace merges (tsv, iso_c, iso_cts) against the `cp -r` + `sync` floor.

    python bench/bench_subspace.py                  # 1b shape: floor, then every merge once
    python bench/bench_subspace.py --shape pico     # seconds: a smoke test of the bench
    python bench/bench_subspace.py --skip-full-rank # leave out iso_c's full-SVD case
    python bench/bench_subspace.py --before DIR     # also each merge by the code in DIR (a copy
                                                    # holding a `mergesmith` package), same run

Inputs (generated once under bench/models/, see synthetic.py):
- the synthetic pair A, B = A + dense noise: a "full fine-tune" whose task vector has full rank;
- two "LoRA fine-tunes" C, D = A + B_i·A_i (rank 16, on the seven projections of every layer,
  bf16 like A): what merges of adapters of one base see. Their task vectors are rank 16 plus bf16
  rounding, which sits some 10⁻³ · σ₁ below them, so the recipes set ``rank_tol: 0.02``.
Jobs, each one shell command ending in `sync`, timed here, CPU and peak RSS from measure.py:
  floor              `cp -r --reflink=never A OUT && sync`
  tsv lora           base A, C and D, k 8, alpha 0.5 (randomised SVDs)
  tsv full-rank      base A, B, k 8 (randomised SVDs of full-rank deltas)
  iso_c lora         base A, C and D (rank 32 of the sum found by randomised probes)
  iso_cts lora       base A, C and D
  iso_c full-rank    base A, B: one full SVD per matrix (the cost of flattening a full spectrum)
Checks: one matrix of each output equals the method run in-process on the same inputs. Prints
seconds, ratio to the floor and peak RSS against the targets (each LoRA-pair merge and tsv on the
full-rank pair within 10x the floor, at most 1 GB); a missed target is reported, not an error.
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
import torch

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
MODELS, OUT = BENCH / "models", BENCH / "out"
PY = shlex.quote(sys.executable)
GB = 1e9
LORA_RANK, LORA_STD = 16, 0.0224  # entries of B·A ~ 0.002, a tenth of the weights' spread
TARGETS = {"tsv lora": 10.0, "tsv full-rank": 10.0, "iso_c lora": 10.0, "iso_cts lora": 10.0}  # x floor; RSS ≤ 1 GB
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
CHECKED = "model.layers.1.self_attn.q_proj.weight"


def lora_tensor(name: str, shape: tuple[int, ...], which: str) -> torch.Tensor:
    a, _ = synthetic.make_pair_tensors(name, shape)
    if not name.endswith(tuple(f"{p}.weight" for p in PROJECTIONS)):
        return a
    g = synthetic._generator(synthetic.SEED, which, name)
    left = torch.empty(shape[0], LORA_RANK).normal_(0.0, LORA_STD, generator=g)
    right = torch.empty(LORA_RANK, shape[1]).normal_(0.0, LORA_STD, generator=g)
    return (a.float() + left @ right).to(torch.bfloat16)


def ensure_lora(shape_name: str) -> tuple[Path, Path]:
    """C and D next to the synthetic pair, written tensor by tensor like it (once)."""
    shape = synthetic.SHAPES[shape_name]
    final = MODELS / f"{shape_name}-lora"
    marker = final / synthetic.MARKER
    params = {**synthetic.marker_params(shape), "lora_rank": LORA_RANK, "lora_std": LORA_STD}
    dirs = (final / "c", final / "d")
    if marker.is_file() and json.loads(marker.read_text()) == params:
        return dirs
    shutil.rmtree(final, ignore_errors=True)
    shapes = synthetic.tensor_shapes(shape)
    shards = synthetic.plan_shards(shapes)
    files = synthetic.shard_names(len(shards))
    for out in dirs:
        out.mkdir(parents=True)
        (out / "config.json").write_text(json.dumps(synthetic.llama_config(shape), indent=2) + "\n")
        for names, file in zip(shards, files):
            with open(out / file, "wb") as f:
                f.write(synthetic.shard_header(names, shapes))
                for name in names:
                    f.write(lora_tensor(name, shapes[name], out.name).view(torch.int16).numpy())
        if len(files) > 1:
            shutil.copy(MODELS / shape_name / "a" / "model.safetensors.index.json", out)
    marker.write_text(json.dumps(params, indent=2) + "\n")
    return dirs


def recipes(shape: str, a: Path, b: Path, c: Path, d: Path) -> dict[str, tuple[Path, str, dict]]:
    """job name -> (recipe file, method, parameters)."""
    lora_models, full_models = [c, d], [b]
    wanted = {
        "tsv lora": ("tsv", lora_models, {"k": 8, "alpha": 0.5, "rank_tol": 0.02}),
        "tsv full-rank": ("tsv", full_models, {"k": 8, "alpha": 0.5}),
        "iso_c lora": ("iso_c", lora_models, {"alpha": 1.0, "rank_tol": 0.02}),
        "iso_cts lora": ("iso_cts", lora_models, {"alpha": 1.0, "rank_tol": 0.02}),
        "iso_c full-rank": ("iso_c", full_models, {"alpha": 1.0}),
    }
    found = {}
    for job, (method, models, params) in wanted.items():
        path = OUT / shape / "subspace" / (job.replace(" ", "-") + ".yml")
        path.parent.mkdir(parents=True, exist_ok=True)
        listed = "".join(f"  - model: {m}\n" for m in models)
        path.write_text(
            f"merge_method: {method}\nbase_model: {a}\nmodels:\n{listed}"
            f"parameters: {json.dumps(params)}\ndtype: bfloat16\n"
        )
        found[job] = (path, method, params)
    return found


def check(out: Path, recipe: Path) -> str:
    """One output matrix against the method run in-process on the same inputs."""
    from safetensors import safe_open

    from mergesmith.api import plan as make_plan
    from mergesmith.execute.method import merge_tensors
    from mergesmith.execute.runner import generator_for
    from mergesmith.methods.registry import METHODS

    job = next(j for j in make_plan(recipe).jobs if j.output == CHECKED)
    tensors = []
    for source in job.sources:
        path = Path(source.model) / "model.safetensors.index.json"
        index = json.loads(path.read_text())["weight_map"] if path.is_file() else None
        file = Path(source.model) / (index[source.name] if index else "model.safetensors")
        with safe_open(file, "pt") as f:
            tensors.append(f.get_tensor(source.name))
    want = merge_tensors(METHODS[job.method], tensors, job.base_index, job.params, generator_for(0, CHECKED))
    index_file = out / "model.safetensors.index.json"
    name = json.loads(index_file.read_text())["weight_map"][CHECKED] if index_file.is_file() else "model.safetensors"
    with safe_open(out / name, "pt") as f:
        got = f.get_tensor(CHECKED)
    return (
        "equal"
        if torch.equal(got, want.to(got.dtype))
        else f"DIFFERS (max {float((got.float() - want.float()).abs().max()):.3g})"
    )


def warm(*dirs: Path) -> None:
    for path in sorted(p for d in dirs for p in d.iterdir()):
        with open(path, "rb") as f:
            while f.read(1 << 24):
                pass


def run(name: str, shell: str, out: Path, how: str, cwd: Path = REPO) -> measure.Sample:
    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    sample = measure.run_measured(shell, how, cwd=cwd)
    print(
        f"  {name}: {sample.wall_s:.2f} s, {sample.cpu_s:.1f} CPU s, {sample.peak_rss_bytes / GB:.2f} GB",
        file=sys.stderr,
    )
    return sample


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", choices=("pico", "1b"), default="1b")
    p.add_argument("--skip-full-rank", action="store_true", help="leave out iso_c on the full-rank pair")
    p.add_argument("--before", type=Path, help="a copy of the code to time as well (runs `python -m mergesmith` there)")
    args = p.parse_args(argv)
    start = time.perf_counter()
    pair, _ = synthetic.ensure_pair(args.shape, MODELS)
    c, d = ensure_lora(args.shape)
    print(f"{args.shape}: inputs ready ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    warm(pair.a, pair.b, c, d)
    how, q = measure.probe(), lambda path: shlex.quote(str(path))
    floor_out = OUT / args.shape / "subspace" / "floor"
    floor = run("floor", f"cp -r --reflink=never {q(pair.a)} {q(floor_out)} && sync", floor_out, how)
    shutil.rmtree(floor_out, ignore_errors=True)
    rows = [("floor: `cp -r` + `sync`", floor, "")]
    for job, (recipe, _, params) in recipes(args.shape, pair.a, pair.b, c, d).items():
        if args.skip_full_rank and job == "iso_c full-rank":
            continue
        out = OUT / args.shape / "subspace" / job.replace(" ", "-")
        merge = f"{PY} -m mergesmith merge {q(recipe)} {q(out)} --quiet --force && sync"
        if args.before:  # the merge is seeded: the same output, so the check stays with the current code
            rows.append((f"{job} (before)", run(f"{job} (before)", merge, out, how, cwd=args.before.resolve()), ""))
        sample = run(job, merge, out, how)
        rows.append((f"{job} {json.dumps(params)}", sample, check(out, recipe)))
        shutil.rmtree(out, ignore_errors=True)
    print("| job | wall s | x floor | CPU s | peak RSS | one matrix vs in-process |")
    print("|---|---|---|---|---|---|")
    for name, s, checked in rows:
        ratio = s.wall_s / floor.wall_s
        print(f"| {name} | {s.wall_s:.2f} | {ratio:.1f} | {s.cpu_s:.1f} | {s.peak_rss_bytes / GB:.2f} GB | {checked} |")
    failed = [r for r in rows if r[2].startswith("DIFFERS")]
    for name, s, _ in rows:
        job = name.split(" {")[0]
        if job in TARGETS:
            ok = s.wall_s <= TARGETS[job] * floor.wall_s and s.peak_rss_bytes <= GB
            print(
                f"{'PASS' if ok else 'MISS'} {job}: {s.wall_s / floor.wall_s:.1f}x floor (<= {TARGETS[job]:g}x), "
                f"{s.peak_rss_bytes / GB:.2f} GB (<= 1 GB)"
            )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
