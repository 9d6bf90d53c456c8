"""Many models through llama.cpp's converter in one child process, as mergekit_batch.py does for mergekit.

``mergesmith.gguf.convert`` starts one converter process per file, and each imports torch and the
converter again (5-10 s on a loaded 2-core machine). The per-family logits checks convert some 30
pico models, so here one child runs mergesmith's converter wrapper (``_run_converter.main``, the
same code, with the same pre-tokenizer fallback and config fixes) for each model in turn.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from mergesmith.gguf.convert import RUNNER
from mergesmith.gguf.pretok import pre_tokenizer_for_dir

_DRIVER = """
import json, runpy, sys, traceback
runner_path, jobs_path, failures_path = sys.argv[1:4]  # the runner replaces sys.argv
runner = runpy.run_path(runner_path)
failures = {}
for args in json.load(open(jobs_path)):
    try:
        runner["main"](args)
    except BaseException:
        failures[args[-1]] = traceback.format_exc(limit=3)[-2000:]
json.dump(failures, open(failures_path, "w"))
"""


def convert_many(converter: Path, jobs: dict[str, Path], out_dir: Path) -> tuple[dict[str, Path], dict[str, str]]:
    """F16 GGUF of each ``{name: model_dir}``: ``({name: gguf path}, {gguf path: error text})``."""
    listing, paths = [], {}
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, model_dir in jobs.items():
        paths[name] = out_dir / f"{name}-F16.gguf"
        pre = pre_tokenizer_for_dir(model_dir) or "-"
        listing.append([str(converter), pre, str(model_dir), "--outtype", "f16", "--outfile", str(paths[name])])
    with tempfile.TemporaryDirectory(prefix="convert-batch-") as tmp:
        (Path(tmp) / "jobs.json").write_text(json.dumps(listing))
        failures = Path(tmp) / "failures.json"
        cmd = [sys.executable, "-c", _DRIVER, str(RUNNER), str(Path(tmp) / "jobs.json"), str(failures)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=60 * len(jobs) + 60)
        if done.returncode != 0 or not failures.is_file():
            raise AssertionError(f"converter batch exited {done.returncode}:\n{done.stderr[-4000:]}")
        return paths, json.loads(failures.read_text())
