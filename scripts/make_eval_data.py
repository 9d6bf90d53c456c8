#!/usr/bin/env python3
"""Rebuild data/ — the evaluation sets that ship with mergesmith — from their sources.

A developer tool, not a runtime dependency. Needs (see data/README.md):
  * Debian ``r-cran-janeaustenr`` (R data files, read with the PyPI package ``rdata``),
  * Debian ``bible-kjv`` (its ``bible`` program prints the King James text),
  * the BIG-bench sdist ``bigbench-1.0.0.tar.gz`` (``--bigbench-sdist``; without it the script
    runs ``--pip download --no-deps --no-binary :all: bigbench==1.0.0``; ``--pip`` must be a
    pip 23.x command: newer pips refuse the sdist's direct-URL dependency).

Split rule: every split comes from its own novel or books, so the splits share no passage;
each is the source's text from its start, cut at the last paragraph (Austen) or verse (KJV)
boundary that keeps it within the split's byte budget. Same sources → byte-identical files
(``data/SHA256SUMS``).

    python scripts/make_eval_data.py [--out data] [--bigbench-sdist bigbench-1.0.0.tar.gz]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import re
import shlex
import subprocess
import tarfile
import tempfile
import warnings
import zlib
from pathlib import Path

AUSTEN_DIR = Path("/usr/lib/R/site-library/janeaustenr/data")
KB = 1000
# split → (source, byte budget). Sources are disjoint within each corpus.
AUSTEN_SPLITS = {
    "heldout": ("persuasion", 100 * KB),
    "fitness": ("northangerabbey", 100 * KB),
    "selection": ("mansfieldpark", 100 * KB),
    "train": ("prideprejudice", 300 * KB),
}
KJV_SPLITS = {
    "heldout": ("Luke1:1-Luke24:53", 100 * KB),
    "fitness": ("John1:1-John21:25", 100 * KB),
    "selection": ("Acts1:1-Acts28:31", 100 * KB),
    "train": ("Gen1:1-Exo40:38", 300 * KB),
}
# BIG-bench multiple-choice tasks on which SmolLM2-135M-Instruct scores clearly above chance.
BIGBENCH_TASKS = ("general_knowledge", "human_organs_senses", "similarities_abstraction")
BIGBENCH_VERSION = "1.0.0"


def austen_novels(directory: Path = AUSTEN_DIR) -> dict[str, list[str]]:
    """R's lazy-load database: Rdata.rdx indexes (offset, length) of zlib blobs in Rdata.rdb."""
    import rdata

    # rdata warns that .rdx/.rdb are not .rds files by name; they are RDS streams all the same.
    warnings.filterwarnings("ignore", category=UserWarning, module=r"rdata\.")
    index = rdata.conversion.convert(rdata.parser.parse_data(gzip.decompress((directory / "Rdata.rdx").read_bytes())))
    blob = (directory / "Rdata.rdb").read_bytes()
    novels = {}
    for name, (offset, length) in index["variables"].items():
        raw = zlib.decompress(blob[int(offset) + 4 : int(offset) + int(length)])  # 4 bytes: uncompressed size
        novels[str(name)] = [str(line) for line in rdata.conversion.convert(rdata.parser.parse_data(raw))]
    return novels


def paragraphs(lines: list[str]) -> list[str]:
    """Unwrap a Gutenberg text: lines between blank lines form one paragraph."""
    out, current = [], []
    for line in lines + [""]:
        if line.strip():
            current.append(line.strip())
        elif current:
            out.append(" ".join(current))
            current = []
    return out


def kjv_chapters(passage: str) -> list[list[str]]:
    """Verses (no numbers) grouped by chapter, from the ``bible`` program's output."""
    text = subprocess.run(["bible", "-l100000", passage], check=True, capture_output=True, text=True).stdout
    chapters: list[list[str]] = []
    for line in text.splitlines():
        verse = re.match(r"^\s+\d+ (.*)$", line)
        if verse:
            chapters[-1].append(verse.group(1).strip())
        elif line.strip():  # a heading such as "Luke 3" starts a chapter
            chapters.append([])
    return [c for c in chapters if c]


def cut(units: list[str], budget: int, sep: str) -> str:
    """The longest prefix of ``units`` joined by ``sep`` (plus a final newline) within ``budget`` bytes."""
    out, size = [], 1
    for unit in units:
        extra = len(unit.encode("utf-8")) + (len(sep) if out else 0)
        if size + extra > budget:
            break
        out.append(unit)
        size += extra
    return sep.join(out) + "\n"


def kjv_text(passage: str, budget: int) -> str:
    """Verses one per line, a blank line between chapters, cut at a verse boundary."""
    lines = []
    for chapter in kjv_chapters(passage):
        lines += ([""] if lines else []) + chapter
    text = cut(lines, budget, "\n")
    return re.sub(r"\n+\Z", "\n", text)


def bigbench_items(task: dict) -> tuple[list[dict], int]:
    """Examples with exactly one best choice → {question, choices, answer}; and how many were dropped."""
    items, dropped = [], 0
    for ex in task["examples"]:
        scores = ex.get("target_scores")
        best = max(scores.values()) if scores else None
        if not scores or best <= 0 or list(scores.values()).count(best) != 1:
            dropped += 1
            continue
        choices = list(scores)
        items.append(
            {"question": ex["input"].strip(), "choices": choices, "answer": choices.index(max(choices, key=scores.get))}
        )
    return items, dropped


def bigbench_sdist(path: str | None, pip: str, tmp: Path) -> Path:
    if path:
        return Path(path)
    subprocess.run(
        shlex.split(pip)
        + ["download", "--no-deps", "--no-binary", ":all:", f"bigbench=={BIGBENCH_VERSION}", "-d", str(tmp)],
        check=True,
    )
    return next(tmp.glob("bigbench-*.tar.gz"))


def bigbench_tasks(sdist: Path, names=BIGBENCH_TASKS) -> dict[str, dict]:
    wanted = {f"bigbench-{BIGBENCH_VERSION}/bigbench/benchmark_tasks/{n}/task.json": n for n in names}
    found = {}
    with tarfile.open(sdist, "r:gz") as tar:
        for member in tar:
            if member.name in wanted:
                found[wanted[member.name]] = json.load(tar.extractfile(member))
    missing = set(names) - set(found)
    if missing:
        raise SystemExit(f"{sdist}: no task.json for {', '.join(sorted(missing))}")
    return found


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    print(f"{path}: {len(text.encode('utf-8'))} bytes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "data"))
    parser.add_argument("--bigbench-sdist", help="path of bigbench-1.0.0.tar.gz (downloaded with --pip when absent)")
    parser.add_argument(
        "--pip", default="python3 -m pip", help="a pip 23.x command for that download (default: python3 -m pip)"
    )
    args = parser.parse_args()
    out = Path(args.out)

    novels = austen_novels()
    for split, (novel, budget) in AUSTEN_SPLITS.items():
        write(out / "text" / f"austen_{split}.txt", cut(paragraphs(novels[novel]), budget, "\n\n"))
    for split, (passage, budget) in KJV_SPLITS.items():
        write(out / "text" / f"kjv_{split}.txt", kjv_text(passage, budget))

    with tempfile.TemporaryDirectory() as tmp:
        tasks = bigbench_tasks(bigbench_sdist(args.bigbench_sdist, args.pip, Path(tmp)))
    for name, task in tasks.items():
        items, dropped = bigbench_items(task)
        write(out / "tasks" / f"{name}.jsonl", "".join(json.dumps(i, ensure_ascii=False) + "\n" for i in items))
        print(f"  {name}: {len(items)} items, {dropped} dropped (no single best choice)")

    files = sorted(p for p in out.rglob("*") if p.is_file() and p.suffix in (".txt", ".jsonl"))
    sums = "".join(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(out)}\n" for p in files)
    write(out / "SHA256SUMS", sums)


if __name__ == "__main__":
    main()
