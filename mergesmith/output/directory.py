"""The output directory appears whole or not at all: written beside it, renamed at the end."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from mergesmith.errors import OutputExistsError


def check_target(out: Path, force: bool) -> None:
    if out.exists() and not force:
        raise OutputExistsError(f"{out} already exists; choose another output path or pass --force to replace it")
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out} exists and is not a directory; remove it or choose another output path")


@contextlib.contextmanager
def staged_directory(out: Path, force: bool) -> Iterator[Path]:
    """Yield a temporary sibling of ``out``; on success it replaces ``out``, on error it is removed."""
    out = out.resolve()
    check_target(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        os.rename(out, old)
    os.rename(staging, out)
    shutil.rmtree(old, ignore_errors=True)
