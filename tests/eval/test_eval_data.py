"""The evaluation data that ships in data/: present, parseable, small, disjoint, reproducible."""

from __future__ import annotations

import hashlib

import pytest

from mergesmith.errors import InputFormatError
from mergesmith.eval.data import (
    DATA_DIR,
    bundled_tasks,
    bundled_texts,
    read_task,
    read_text,
)

SPLITS = ("heldout", "fitness", "train")


def test_bundled_files_match_their_checksums():
    lines = (DATA_DIR / "SHA256SUMS").read_text().splitlines()
    listed = {}
    for line in lines:
        digest, name = line.split("  ")
        listed[name] = digest
    assert listed, "data/SHA256SUMS is empty"
    for name, digest in listed.items():
        assert hashlib.sha256((DATA_DIR / name).read_bytes()).hexdigest() == digest, name
    shipped = {str(p.relative_to(DATA_DIR)) for p in DATA_DIR.rglob("*") if p.suffix in (".txt", ".jsonl")}
    assert shipped == set(listed)
    assert sum((DATA_DIR / n).stat().st_size for n in listed) < 5_000_000


def test_default_sets_are_the_heldout_texts_and_every_task():
    assert [p.name for p in bundled_texts()] == ["austen_heldout.txt", "kjv_heldout.txt"]
    assert len(bundled_tasks()) >= 2


@pytest.mark.parametrize("corpus", ["austen", "kjv"])
def test_text_splits_share_no_passage(corpus):
    paragraphs = {}
    for split in SPLITS:
        text = read_text(DATA_DIR / "text" / f"{corpus}_{split}.txt").text
        assert 50_000 < len(text.encode("utf-8")) <= 300_000
        paragraphs[split] = {p for p in text.split("\n") if len(p) > 80}  # long lines: no stock phrases
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1 :]:
            assert not paragraphs[a] & paragraphs[b], (a, b)


def test_every_bundled_task_parses_with_answers_in_range():
    for path in bundled_tasks():
        task = read_task(path.stem)  # by bundled name
        assert len(task.items) >= 30
        assert all(
            0 <= item.answer < len(item.choices) and len(set(item.choices)) == len(item.choices) for item in task.items
        )


def test_empty_task_file_is_refused(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    with pytest.raises(InputFormatError, match="no items"):
        read_task(path)
