"""The output appears whole or not at all: written beside it, renamed at the end.

Staging siblings are named ``.NAME.partial-PID`` (and ``.NAME.old-PID`` during the swap), so a
later run can tell a crashed writer's leftovers (its process is gone: removed, with a warning)
from a live writer's (refused: two processes never write one output). The check and the claim
happen under an exclusive ``flock`` of the parent directory, so of two runs started at once on
one output exactly one proceeds.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

from mergesmith.errors import OutputExistsError, UnsafeOutputError

_SIBLING = re.compile(r"\.(?P<name>.+)\.(?:partial|old)-(?P<pid>\d+)")


def check_target(out: Path, force: bool) -> None:
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise OutputExistsError(f"{out} exists and is not a directory; remove it or choose another output path")
    if out.exists() and not force:
        raise OutputExistsError(f"{out} already exists; choose another output path, or set force (--force) to replace it")


def check_not_input(out: Path, inputs: Iterable[tuple[str, Path]]) -> None:
    """Refuse an output that is, contains or lies inside an input (``(what, path)`` pairs), symlinks
    resolved: replacing it (force) or writing into it would change that input."""
    target = Path(out).expanduser().resolve()
    for what, path in inputs:
        path = Path(path).resolve()
        if target == path:
            relation = "is"
        elif path in target.parents:
            relation = "lies inside"
        elif target in path.parents:
            relation = "contains"
        else:
            continue
        raise UnsafeOutputError(
            f"output {out} {relation} {what} ({path}); writing it could change that input; "
            "choose an output path outside every input"
        )


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # another user's live process
        return True
    return True


def _siblings(out: Path) -> Iterator[tuple[Path, int]]:
    if not out.parent.is_dir():
        return
    for entry in out.parent.iterdir():
        match = _SIBLING.fullmatch(entry.name)
        if match and match["name"] == out.name:
            yield entry, int(match["pid"])


@contextlib.contextmanager
def parent_lock(out: Path) -> Iterator[None]:
    """An exclusive lock on ``out``'s parent directory (created if needed), for short critical sections."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(out.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def clear_stale(out: Path) -> None:
    """Remove staging siblings of ``out`` left by processes that are gone (one warning each);
    refuse when a live process is writing ``out``. Call under :func:`parent_lock`."""
    for entry, pid in _siblings(out):
        if pid != os.getpid() and _alive(pid):
            raise OutputExistsError(
                f"{out} is being written by another process (pid {pid}, staging {entry.name}); "
                "wait for it to finish or choose another output path"
            )
    for entry, pid in list(_siblings(out)):
        if pid == os.getpid():
            continue
        warnings.warn(f"removed {entry}, left behind by an interrupted run (process {pid} is gone)", stacklevel=3)
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def claim_staging(out: Path, force: bool, *, directory: bool = True) -> Path:
    """Check ``out``, clear stale siblings and create this process's staging path, atomically with
    respect to other mergesmith processes. ``directory=False`` returns the path without creating it
    (a single staged file)."""
    out = out.absolute()
    with parent_lock(out):
        check_target(out, force)
        clear_stale(out)
        staging = out.parent / f".{out.name}.partial-{os.getpid()}"
        if staging.is_dir() and not staging.is_symlink():
            shutil.rmtree(staging)
        elif staging.exists() or staging.is_symlink():
            staging.unlink()
        if directory:
            staging.mkdir()
    return staging


def publish(staging: Path, out: Path, force: bool) -> None:
    """Move a complete staging directory (or file) into place as ``out``."""
    out = out.absolute()
    with parent_lock(out):
        check_target(out, force)   # another run may have published meanwhile
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        if out.exists():
            os.rename(out, old)
        os.rename(staging, out)
    if old.is_dir():
        shutil.rmtree(old, ignore_errors=True)
    elif old.exists():
        old.unlink()


@contextlib.contextmanager
def staged_directory(out: Path, force: bool) -> Iterator[Path]:
    """Yield a staging sibling of ``out``; on success it replaces ``out``, on error it is removed."""
    out = Path(os.path.abspath(out))
    staging = claim_staging(out, force)
    try:
        yield staging
        publish(staging, out, force)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
