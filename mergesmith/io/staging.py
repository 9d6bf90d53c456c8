"""Staging siblings: an output appears whole or not at all, and a crashed writer's leftovers are
told from a live writer's.

A file or directory is written as a hidden sibling ``.NAME.partial-PID`` (``.NAME.old-PID`` holds
what it replaces during the swap) and renamed into place when complete. A later run removes the
siblings whose process is gone (with a warning) and refuses to touch a live one, so two processes
never write one output. The check and the claim happen under an exclusive ``flock`` of the parent
directory, so of two runs started at once on one output exactly one proceeds.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

from mergesmith.errors import OutputExistsError, OutputWriteError

_SIBLING = re.compile(r"\.(?P<name>.+)\.(?:partial|old)-(?P<pid>\d+)")


def check_target(out: Path, force: bool) -> None:
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise OutputExistsError(f"{out} exists and is not a directory; remove it or choose another output path")
    if out.exists() and not force:
        raise OutputExistsError(
            f"{out} already exists; choose another output path, or set force (--force) to replace it"
        )


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
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
        check_target(out, force)  # another run may have published meanwhile
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        if out.exists():
            os.rename(out, old)
        os.rename(staging, out)
    if old.is_dir():
        shutil.rmtree(old, ignore_errors=True)
    elif old.exists():
        old.unlink()


def replace_text(path, text: str) -> None:
    """Write the text file ``path`` whole or not at all (results, model cards): staged beside it as
    ``.NAME.partial-PID``, renamed into place, the staged file removed whatever happens."""
    path = Path(path).absolute()
    with parent_lock(path):
        clear_stale(path)  # what a killed run left (warned about); a live writer is refused
    staged = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        staged.write_text(text, encoding="utf-8")
        os.replace(staged, path)
    except OSError as exc:
        raise OutputWriteError(
            f"{path} cannot be written ({exc.strerror}); check the folder's permissions and free space"
        ) from None
    finally:
        staged.unlink(missing_ok=True)  # Ctrl-C or a full disk: no stray partial file
