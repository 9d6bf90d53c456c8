"""Run one shell command and measure wall time, CPU time and peak RSS of its process tree.

    probe() -> str                       "gnu-time" when /usr/bin/time -v works, else "rusage"
    run_measured(shell, probe) -> Sample

Both probes report the peak resident set of the largest process in the tree (Linux folds
each reaped child's ru_maxrss into its parent's), which for mergesmith and mergekit is the one
Python process doing the merge. "rusage" runs the command under a small Python wrapper and
reads getrusage(RUSAGE_CHILDREN) there, so each job is accounted on its own. RSS counts file
pages mapped by the process (safetensors reads through mmap) as well as anonymous memory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

GNU_TIME = "/usr/bin/time"
_RUSAGE_WRAPPER = (
    "import json, resource, subprocess, sys\n"
    "code = subprocess.call(['sh', '-c', sys.argv[1]])\n"
    "r = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
    "print(json.dumps({'cpu_s': r.ru_utime + r.ru_stime, 'rss_kib': r.ru_maxrss}), file=sys.stderr)\n"
    "sys.exit(code)\n"
)


@dataclass(frozen=True)
class Sample:
    wall_s: float
    cpu_s: float  # user + system, whole tree
    peak_rss_bytes: int


class JobFailed(RuntimeError):
    """The measured command exited non-zero; the message carries the command and stderr."""


def probe() -> str:
    if os.access(GNU_TIME, os.X_OK):
        done = subprocess.run([GNU_TIME, "-v", "true"], capture_output=True, text=True)
        if done.returncode == 0 and "Maximum resident set size" in done.stderr:
            return "gnu-time"
    return "rusage"


def _parse_gnu_time(text: str) -> tuple[float, int]:
    fields = dict(line.strip().rsplit(": ", 1) for line in text.splitlines() if ": " in line)
    cpu = float(fields["User time (seconds)"]) + float(fields["System time (seconds)"])
    return cpu, int(fields["Maximum resident set size (kbytes)"]) * 1024


def _run(argv: list[str], shell: str, cwd: Optional[Path]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise JobFailed(f"exit {done.returncode}: {shell}\n{done.stderr[-3000:]}")
    return wall, done.stderr


def run_measured(shell: str, how: str, cwd: Optional[Path] = None) -> Sample:
    """Run ``sh -c shell`` (stdout discarded) and measure it; raises JobFailed on failure."""
    if how == "gnu-time":
        with tempfile.NamedTemporaryFile("r", suffix=".time") as report:
            wall, _ = _run([GNU_TIME, "-v", "-o", report.name, "sh", "-c", shell], shell, cwd)
            cpu, rss = _parse_gnu_time(report.read())
        return Sample(wall, cpu, rss)
    wall, stderr = _run([sys.executable, "-c", _RUSAGE_WRAPPER, shell], shell, cwd)
    usage = json.loads(stderr.strip().splitlines()[-1])
    return Sample(wall, usage["cpu_s"], usage["rss_kib"] * 1024)
