"""Where llama.cpp's HF→GGUF converter lives, and how it gets there from the llama-cpp-python sdist.

The llama-cpp-python wheel carries the compiled library but not ``convert_hf_to_gguf.py``; its
sdist carries the whole llama.cpp tree. ``fetch_converter`` copies out the converter script, its
``conversion`` package and the ``gguf-py`` it was written against (newer than the gguf release on
PyPI, so it must stay beside the script) into the virtual environment, once, so that conversion
runs offline afterwards. The version is the installed llama-cpp-python's: converter and
quantizer come from the same llama.cpp.

    python -m mergesmith.gguf.converter [--sdist FILE]     # what scripts/setup.sh runs

``export-gguf`` (``ensure_converter``) fetches it on first use too, so pip users need no extra step.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import warnings
from pathlib import Path

from mergesmith.errors import InputFormatError, MergesmithError
from mergesmith.eval.llama_cpp import llama_cpp_version

SCRIPT = "convert_hf_to_gguf.py"
# Paths inside vendor/llama.cpp that the converter needs; a trailing slash is a whole folder.
MEMBERS = (SCRIPT, "conversion/", "gguf-py/gguf/", "LICENSE")


def default_converter_dir(version: str | None = None) -> Path:
    """The one default: a folder of the running virtual environment, named by the llama.cpp release."""
    return Path(sys.prefix) / "share" / "mergesmith" / f"llama.cpp-converter-{version or llama_cpp_version()}"


def _complete(path: Path) -> bool:
    return (
        (path / SCRIPT).is_file()
        and (path / "conversion" / "__init__.py").is_file()
        and (path / "gguf-py" / "gguf" / "__init__.py").is_file()
    )


def check_converter(path: Path | None = None) -> Path:
    """``path`` (default: ``default_converter_dir()``) if it holds the converter; else how to get it."""
    path = default_converter_dir() if path is None else Path(path)
    if not _complete(path):
        raise InputFormatError(
            f"llama.cpp's converter is not in {path} (want {SCRIPT}, conversion/ and gguf-py/ from the llama-cpp-python "
            "sdist); leave the converter folder unset to fetch it there once, or run `python -m mergesmith.gguf.converter "
            "--dest DIR`"
        )
    return path


def ensure_converter(path: Path | None = None) -> Path:
    """The converter folder: ``path`` when given (it must hold the converter); otherwise the default
    folder, fetched there on first use (pip downloads the installed llama-cpp-python's sdist once,
    with a warning first: the library prints nothing, and a download of a minute deserves a line)."""
    if path is not None:
        return check_converter(path)
    dest = default_converter_dir()
    if not _complete(dest):
        warnings.warn(f"fetching llama.cpp's converter into {dest} (once; pip downloads about 76 MB)", stacklevel=2)
        fetch_converter(dest)
    return dest


def _download(version: str, into: Path) -> Path:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--no-deps",
        "--no-binary",
        ":all:",
        f"llama-cpp-python=={version}",
        "-d",
        str(into),
    ]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True)
    found = sorted(into.glob("llama_cpp_python-*.tar.gz"))
    if done.returncode != 0 or not found:
        tail = " ".join((done.stderr or done.stdout).strip().splitlines()[-2:])
        raise MergesmithError(
            f"could not download the llama-cpp-python {version} sdist ({tail}); without network, download it "
            f"elsewhere (pip download --no-deps --no-binary :all: llama-cpp-python=={version}) and pass --sdist FILE"
        )
    return found[0]


def _extract(sdist: Path, dest: Path) -> None:
    """Copy the MEMBERS of ``<root>/vendor/llama.cpp/`` into ``dest`` (regular files only)."""
    copied = 0
    try:
        with tarfile.open(sdist, "r:gz") as tar:
            for member in tar:
                root, _, rest = member.name.partition("/vendor/llama.cpp/")
                if not rest or "/" in root or not member.isfile() or ".." in Path(rest).parts:
                    continue
                if not any(rest == m or (m.endswith("/") and rest.startswith(m)) for m in MEMBERS):
                    continue
                target = dest / rest
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
                copied += 1
    except (OSError, tarfile.TarError) as exc:
        raise InputFormatError(f"{sdist}: not a readable llama-cpp-python sdist ({exc}); download it again") from exc
    if not _complete(dest):
        raise InputFormatError(
            f"{sdist}: has no vendor/llama.cpp/{SCRIPT} with conversion/ and gguf-py/ ({copied} files matched); "
            "pass the sdist of llama-cpp-python 0.3.x or later"
        )


def fetch_converter(dest: Path | None = None, *, version: str | None = None, sdist: Path | None = None) -> Path:
    """Extract the converter into ``dest`` unless it is there already; returns ``dest``.

    ``sdist`` is a downloaded ``llama_cpp_python-<version>.tar.gz``; without it pip downloads the
    sdist of the installed version. The folder appears whole or not at all (staged, then renamed).
    """
    version = version or llama_cpp_version()
    dest = default_converter_dir(version) if dest is None else Path(dest)
    if _complete(dest):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}.partial-") as tmp:
        staging = Path(tmp) / "converter"
        _extract(Path(sdist) if sdist else _download(version, Path(tmp)), staging)
        if dest.exists():  # an incomplete leftover of an interrupted older layout
            shutil.rmtree(dest)
        os.replace(staging, dest)
    return dest


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mergesmith.gguf.converter", description=fetch_converter.__doc__)
    parser.add_argument("--dest", type=Path, help="target folder (default: inside this virtual environment)")
    parser.add_argument("--sdist", type=Path, help="a downloaded llama-cpp-python sdist (default: pip downloads it)")
    args = parser.parse_args(argv)
    try:
        print(fetch_converter(args.dest, sdist=args.sdist))
    except MergesmithError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
