"""Differential check: mergekit 0.1.5 on the same recipes must write the same tensors.

    python examples/specialists/run.py                 # first: mergesmith's outputs in out/specialists/
    python examples/specialists/check_mergekit.py      # then mergekit-yaml on each recipe, compared

mergekit resolves relative paths from its working directory, so it runs from this directory,
offline, on CPU, folding each `base+adapter` with peft (--lora-merge-cache). Tensors are compared
in ulps with the project's differential harness (tests/reference.py). dare_ties draws its random
masks differently in the two tools (mergekit: torch's global generator; mergesmith: one generator
per tensor from (seed, name)), so only the tensors LoRA does not touch can match there.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from common import DOMAINS, HERE, ROOT, WORK
from run import MERGES

sys.path.insert(0, str(ROOT / "tests"))
from reference import compare, load_dir, mergekit_script  # noqa: E402  (the harness lives in tests/)


def run_mergekit(recipe: Path, out: Path, cache: Path, seed: int) -> float:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [
        str(mergekit_script()),
        recipe.name,
        str(out),
        "--no-cuda",
        "--quiet",
        # its model card asks the Hub whether 'adapters/kjv' is a repo id, which fails offline
        "--no-write-model-card",
        "--lora-merge-cache",
        str(cache),
        "--random-seed",
        str(seed),
    ]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=HERE, capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(f"mergekit-yaml failed on {recipe.name}:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipes", nargs="+", choices=(*DOMAINS, *MERGES), default=[*DOMAINS, *MERGES])
    p.add_argument("--work", type=Path, default=WORK, help="where run.py wrote mergesmith's outputs")
    p.add_argument("--seed", type=int, default=0)
    opts = p.parse_args(argv)
    root = opts.work / "mergekit"
    for name in opts.recipes:
        ours_dir = opts.work / name
        if not (ours_dir / "config.json").is_file():
            raise SystemExit(f"{ours_dir} is missing: run examples/specialists/run.py first")
        out = root / name
        seconds = run_mergekit(HERE / f"{name}.yml", out, root / "lora-cache", opts.seed)
        parity = compare(load_dir(ours_dir), load_dir(out))
        print(f"{name}: {parity.summary()} (mergekit {seconds:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
