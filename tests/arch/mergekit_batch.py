"""Many recipes through mergekit 0.1.5 in one subprocess.

``reference.run_mergekit`` starts ``mergekit-yaml`` once per recipe, and each start imports
torch, transformers and mergekit again (10 s on a loaded 2-core CI machine). Here one child
process calls mergekit-yaml's own entry point (the same click command, the same options) for
every recipe in turn, so a module of differential tests pays that import once. The child shares
no code with mergesmith, as in reference.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from reference import MERGEKIT_TIMEOUT_S, MergekitFailed, require_mergekit

_DRIVER = """
import json, sys, traceback
from mergekit.scripts.run_yaml import main
failures = {}
for recipe, out in json.load(open(sys.argv[1])):
    try:
        main([recipe, out, "--no-cuda", "--quiet"], standalone_mode=False)
    except Exception:
        failures[out] = traceback.format_exc(limit=3)[-2000:]
json.dump(failures, open(sys.argv[2], "w"))
"""


def run_mergekit_many(jobs: list[tuple[str, Path]]) -> dict[Path, str]:
    """Run every ``(recipe_yaml, out)``; returns ``{out: error text}`` for the recipes mergekit refused."""
    require_mergekit()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    with tempfile.TemporaryDirectory(prefix="mergekit-batch-") as tmp:
        listing = []
        for i, (recipe, out) in enumerate(jobs):
            path = Path(tmp) / f"recipe{i}.yml"
            path.write_text(recipe)
            listing.append([str(path), str(out)])
        (Path(tmp) / "jobs.json").write_text(json.dumps(listing))
        cmd = [sys.executable, "-c", _DRIVER, str(Path(tmp) / "jobs.json"), str(Path(tmp) / "failures.json")]
        done = subprocess.run(
            cmd, capture_output=True, text=True, env=env, check=False, timeout=MERGEKIT_TIMEOUT_S + 30 * len(jobs)
        )
        if done.returncode != 0:
            raise MergekitFailed(
                f"mergekit batch driver exited {done.returncode}\nstderr (tail):\n{done.stderr[-4000:]}"
            )
        failures = json.loads((Path(tmp) / "failures.json").read_text())
    return {Path(out): text for out, text in failures.items()}
