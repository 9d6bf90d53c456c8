"""Backends and durability: local processes and Ray agree with one process; a killed search resumes.

These start worker processes (each imports torch and transformers), a local Ray instance, and
a `mergesmith search` subprocess: about a minute in all on 2 busy cores.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time

import pytest
from search_helpers import board, ta_space

from mergesmith.search import search

BUDGET = 6


def test_local_processes_and_ray_give_the_leaderboard_of_one_process(llama_family, write_space, tmp_path):
    ray = pytest.importorskip("ray")
    space = write_space(ta_space(llama_family))
    inline = search(space, tmp_path / "inline", budget=BUDGET, seed=5, threads=1)
    local = search(space, tmp_path / "local", budget=BUDGET, seed=5, workers=2, threads=1)
    # The held-out report runs on the workers too, row by row wherever one is free: same rows.
    assert [(r.name, r.fitness, r.heldout) for r in local.report] == [
        (r.name, r.fitness, r.heldout) for r in inline.report
    ]
    assert not ray.is_initialized()
    on_ray = search(
        space, tmp_path / "ray", budget=BUDGET, seed=5, workers=2, threads=1, use_ray=True, write_winner=False
    )
    assert not ray.is_initialized()  # the local instance the search started is shut down again
    assert board(local) == board(inline) == board(on_ray)
    assert {r.worker.split("-")[0] for r in local.records} == {"local"}
    assert {r.worker.split("-")[0] for r in on_ray.records} == {"ray"}
    assert "local Ray instance" in on_ray.settings["backend"]


def _rows(path) -> int:
    try:
        with sqlite3.connect(path, timeout=0.1) as db:
            return db.execute("SELECT COUNT(*) FROM candidates").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet, or locked by the writer for a moment
        return 0


def test_a_killed_search_resumes_to_the_uninterrupted_result(llama_family, write_space, tmp_path):
    budget = 24
    space = write_space(ta_space(llama_family))
    whole = search(space, tmp_path / "whole", budget=budget, threads=1, write_winner=False)

    out = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "mergesmith",
        "search",
        str(space),
        str(out),
        "--budget",
        str(budget),
        "--threads",
        "1",
        "--quiet",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while _rows(out / "search.sqlite") < 5 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.kill()
    _, err = proc.communicate()
    finished = _rows(out / "search.sqlite")
    assert proc.returncode == -9, err.decode()
    assert 5 <= finished < budget, "the search ended before it could be killed midway"

    scored = []
    resumed = search(space, out, budget=budget, threads=1, resume=True, on_result=lambda r, n: scored.append(r.index))
    assert board(resumed) == board(whole)
    assert scored == list(range(finished, budget))  # one worker scores in order: nothing finished is redone
    assert (out / "winner" / "README.md").is_file()
