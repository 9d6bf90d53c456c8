"""The routers of a MoE build computed in a child process, so that the building process never
imports torch: it only copies bytes (``build._copy_bytes``) and writes the routers' bytes.

Why: the router pass needs torch, transformers and the tokenizer (about 1.5 CPU seconds of
imports before its first prompt). Imported in a thread of the copying process, they slowed the
copies of the 1.1B bench from 1.7 s to 2.3 s though two cores were never both busy (loading a
library maps and faults pages under the process's one memory-map lock, which every direct write
also takes); from a process of its own they cost the copies 0.1 s. The child runs the same code
as the in-process path (``plan_moe``, ``copy_tokenizer`` into a scratch folder as into the
staging directory, ``router_tensors``), so the routers are the same bits; it leaves one core to
the copies until the parent says they are done.

Used for ``hidden``/``hidden_avg``/``cheap_embed`` gates over a local base with its own tokenizer
(no adapter to fold, no Hub download, nothing the two processes would both write), where this
process has not imported torch yet (``build_moe(router_child=None)``; True or False forces the
choice); otherwise the build computes them in a thread.
The child's errors come back as the same one-line errors; if it dies without an answer, the
parent computes the routers itself.
"""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

from mergesmith import errors
from mergesmith.errors import MergesmithError

PROMPT_GATES = ("hidden", "hidden_avg", "cheap_embed")
CHILD = (sys.executable, "-m", "mergesmith.moe.router_proc")  # + the exchange folder


def eligible(src, wanted: bool | None = None) -> bool:
    """Whether a child computes the routers of ``src`` (a read MoE config): decided from the
    config alone, so the child starts before this process reads any header. ``wanted``: None
    where this process has not imported torch (a CLI run; once it has, a thread is as quick),
    True or False to choose."""
    from mergesmith.config.references import parse_reference
    from mergesmith.io.resolve import local_paths

    if wanted is False or (wanted is None and "torch" in sys.modules):
        return False
    config = src.config
    if config.gate_mode not in PROMPT_GATES or config.tokenizer_source not in (None, "base"):
        return False
    try:
        if parse_reference(config.base_model).lora is not None:
            return False
    except ValueError:
        return False  # the build reports it
    local = local_paths(config.base_model, src.base_dir)
    return bool(local) and local[0].is_dir()  # a folder here: not a Hub id, not a GGUF file


def paced(done: Callable[[], bool]) -> Callable[[], None]:
    """A callback for each layer of the router pass, called once now: torch's threads in the
    calling thread (a per-thread setting) one fewer than the process's cores, at least one, until
    ``done()`` (the copies beside it have finished), every core after."""
    from mergesmith._torch import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    full = torch.get_num_threads()

    def pace() -> None:
        torch.set_num_threads(full if done() else max(1, min(full, cores - 1)))

    pace()
    return pace


class RouterProcess:
    """The child computing the routers: ``result(fallback)`` gives them as bytes by output name."""

    def __init__(self, request: dict):
        self._dir = Path(tempfile.mkdtemp(prefix="mergesmith-routers-"))
        try:
            (self._dir / "request.pickle").write_bytes(pickle.dumps(request))
            with open(self._dir / "log", "wb") as log:
                command = [*CHILD, str(self._dir)]
                self._proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        except BaseException:
            shutil.rmtree(self._dir, ignore_errors=True)  # nothing left behind
            raise

    def copies_done(self) -> None:
        """Tell the child the copies are done: its pass may take every core from now on."""
        (self._dir / "copied").touch()

    def result(self, fallback: Callable[[], dict]) -> dict:
        """``{router name: bytes in the output dtype}``; the child's error raised here; where the
        child died without an answer, ``fallback()`` (the in-process computation)."""
        self._proc.wait()
        try:
            status, payload, caught = pickle.loads((self._dir / "result.pickle").read_bytes())
        except (OSError, EOFError, pickle.UnpicklingError):
            return fallback()
        for message in caught:
            warnings.warn(message, UserWarning, stacklevel=2)
        if status == "error":
            kind, message = payload
            raise getattr(errors, kind, MergesmithError)(message)
        return payload

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        shutil.rmtree(self._dir, ignore_errors=True)


def _compute(request: dict, folder: Path) -> dict:
    from mergesmith._torch import torch
    from mergesmith.io.resolve import close_models, open_headers, open_models
    from mergesmith.moe.gates import router_tensors
    from mergesmith.moe.layout import plan_moe
    from mergesmith.output.tokenizer import copy_tokenizer

    src = request["src"]
    keys = src.config.referenced_models()
    plan = plan_moe(
        src.config, open_headers(keys, base_dir=src.base_dir, allow_pickle=request["allow_pickle"]), src.name
    )
    models = open_models([plan.config.base_model], base_dir=src.base_dir, allow_pickle=request["allow_pickle"])
    pace = paced(lambda: (folder / "copied").exists())
    scratch = folder / "tokenizer"  # inside the folder the parent removes, even if it kills this child
    scratch.mkdir()
    try:
        copy_tokenizer(models[plan.tokenizer_donor], scratch)
        routers = router_tensors(plan, models, scratch, seed=request["seed"], device=request["device"], progress=pace)
    finally:
        close_models(models)
    dtype = getattr(torch, plan.out_dtype)
    return {name: t.to(dtype).contiguous().view(torch.uint8).numpy().tobytes() for name, t in routers.items()}


def main(folder: str) -> None:
    """The child: read the request, write ("ok", routers, mergesmith's warnings) or ("error",
    (type name, message), []); anything else ends the child with no answer."""
    folder_path = Path(folder)
    request = pickle.loads((folder_path / "request.pickle").read_bytes())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            routers = _compute(request, folder_path)
        except MergesmithError as exc:
            result = ("error", (type(exc).__name__, str(exc)), [])
        else:
            ours = [str(w.message) for w in caught if f"{os.sep}mergesmith{os.sep}" in w.filename]
            result = ("ok", routers, ours)
    partial = folder_path / "result.partial"
    partial.write_bytes(pickle.dumps(result))
    partial.rename(folder_path / "result.pickle")


if __name__ == "__main__":
    main(sys.argv[1])
    # The answer is written and renamed into place; the parent waits for this exit, so skip the
    # interpreter's teardown of torch and transformers (0.3-0.5 s here). Output streams first.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
