"""The output directory appears whole or not at all (staged beside it: io/staging.py), and never
where writing it could change an input."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from mergesmith.errors import UnsafeOutputError
from mergesmith.io.staging import check_target, claim_staging, publish

__all__ = ["check_not_input", "check_target", "staged_directory"]


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


@contextlib.contextmanager
def staged_directory(out: Path, force: bool) -> Iterator[Path]:
    """Yield a staging sibling of ``out``; on success it replaces ``out``, on error it is removed."""
    out = Path(os.path.abspath(out))
    created = [p for p in out.parents if not p.exists()]  # folders this run makes for the output
    staging = claim_staging(out, force)
    try:
        yield staging
        publish(staging, out, force)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in created:  # innermost first; a folder something else wrote into stays
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
