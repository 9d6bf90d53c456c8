"""Bad input to ``search``, end to end: a bad search file, and a damaged ``search.sqlite`` on
``--resume`` (garbage, truncated, foreign tables, missing columns, hand-edited rows). Exit 2, one
``error:`` line naming the file and the fix, nothing written, the database byte-identical.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
import yaml
from cli_helpers import assert_one_error_line, cli, digest

from mergesmith.search import search
from mergesmith.search.store import FILE_NAME, Store

# --- search: the space file --------------------------------------------------------------------

FITNESS = {"terms": [{"nll": ["kjv_fitness"]}], "context": 32, "limit": 1}
REPORT = {"texts": ["kjv_heldout"], "limit": 1, "top": 1}


def space(family, lam="search", **extra) -> dict:
    base, ft1, ft2 = map(str, family)
    recipe = {
        "merge_method": "task_arithmetic",
        "base_model": base,
        "models": [{"model": base}, {"model": ft1}, {"model": ft2}],
        "parameters": {"lambda": lam},
    }
    return {"recipe": recipe, "optimizer": "random", "fitness": FITNESS, "report": REPORT, **extra}


def write_space(tmp_path: Path, data) -> Path:
    path = tmp_path / "space.yml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "lam,fragments",
    [
        ({"range": [0, float("inf")]}, ["'lambda'", "finite numbers lo < hi", "inf"]),
        ({"range": ["low", "high"]}, ["'lambda'", "finite numbers lo < hi", "'low'"]),
        ({"range": [1, 0]}, ["'lambda'", "lo < hi", "[1, 0]"]),
        ({"choice": []}, ["'lambda'", "choice is a list of at least 2 values"]),
        ({"rnage": [0, 1]}, ["unknown key 'rnage' in the search marker of 'lambda'", "did you mean 'range'?"]),
    ],
)
def test_search_bad_marker(capsys, tmp_path, llama_family, lam, fragments):
    path = write_space(tmp_path, space(llama_family, lam))
    out = tmp_path / "out"
    assert_one_error_line(*cli(capsys, "search", path, out, "--budget", 2, "--quiet"), str(path), *fragments)
    assert not out.exists()


def test_search_file_not_yaml_not_utf8_unknown_key_and_bad_optimizer(capsys, tmp_path, llama_family):
    out = tmp_path / "out"
    cases = [
        ("recipe: [\n", ["not valid YAML"]),
        (b"recipe: caf\xe9\n", ["not UTF-8 text", "save the search file as UTF-8"]),
        ({**space(llama_family), "optimiser": "cma"}, ["unknown key 'optimiser'", "did you mean 'optimizer'?"]),
        ({**space(llama_family), "optimizer": {"name": "cma", "sigma": "x"}}, ["optimizer.sigma", "valid number"]),
    ]
    for data, fragments in cases:
        path = tmp_path / "space.yml"
        if isinstance(data, bytes):
            path.write_bytes(data)
        else:
            write_space(tmp_path, data)
        assert_one_error_line(*cli(capsys, "search", path, out, "--budget", 2, "--quiet"), str(path), *fragments)
        assert not out.exists()


# --- search: a damaged search.sqlite on --resume ------------------------------------------------


@pytest.fixture(scope="module")
def finished_search(llama_family, tmp_path_factory) -> tuple[Path, Path]:
    """(space file, search directory) of one finished two-candidate search."""
    root = tmp_path_factory.mktemp("search")
    path = write_space(root, space(llama_family))
    search(path, root / "done", budget=2, seed=0, threads=1)
    return path, root / "done"


def _damage(db: Path, case: str) -> str:
    """Damage the database; returns what the error line must say about it."""
    if case == "garbage":
        db.write_bytes(b"\x13\x37 definitely not sqlite " * 100)
        return "file is not a database"
    if case == "truncated":
        db.write_bytes(db.read_bytes()[: db.stat().st_size // 2])
        return "malformed"
    if case == "empty file":
        db.write_bytes(b"")
        return "holds no tables"
    with sqlite3.connect(db) as conn:
        if case == "missing table":
            conn.execute("DROP TABLE candidates")
            return "table 'candidates' is missing"
        if case == "missing column":
            conn.execute("ALTER TABLE candidates DROP COLUMN worker")
            return "table 'candidates' lacks column 'worker'"
        conn.execute("UPDATE candidates SET params = '{oops' WHERE idx = 1")  # a row that is not JSON
    return "candidate #1"


@pytest.mark.parametrize("case", ["garbage", "truncated", "empty file", "missing table", "missing column", "bad row"])
def test_resume_with_a_damaged_database_is_one_line_and_touches_nothing(capsys, tmp_path, finished_search, case):
    space_file, done = finished_search
    out = shutil.copytree(done, tmp_path / "out")
    db = out / FILE_NAME
    why = _damage(db, case)
    before = digest(out)
    assert_one_error_line(
        *cli(capsys, "search", space_file, out, "--budget", 3, "--resume", "--quiet"),
        f"{db} is not a readable search database",
        why,
        "start afresh with force (--force",
    )
    assert digest(out) == before
    # the fix the line gives works
    code, _, stderr = cli(capsys, "search", space_file, out, "--budget", 2, "--force", "--quiet")
    assert code == 0, stderr
    assert Store.open_existing(db).records().keys() == {0, 1}


def test_resume_after_a_kill_mid_commit_rolls_the_journal_back(capsys, tmp_path, finished_search):
    """A hot journal is SQLite's own crash recovery, not damage: the resume goes on."""
    import os
    import signal
    import subprocess
    import sys

    space_file, done = finished_search
    out = shutil.copytree(done, tmp_path / "out")
    writer = (
        "import sqlite3, sys, time\n"
        "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "db.execute('PRAGMA cache_size=5'); db.execute('BEGIN')\n"
        "for i in range(3000): db.execute('INSERT INTO settings VALUES (?, ?)', (f'k{i}', '\"x\"' * 200))\n"
        "print('dirty', flush=True); time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", writer, str(out / FILE_NAME)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "dirty\n"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    assert (out / f"{FILE_NAME}-journal").exists()
    code, _, stderr = cli(capsys, "search", space_file, out, "--budget", 2, "--resume", "--quiet")
    assert code == 0, stderr
    assert not any(k.startswith("k") for k in Store.open_existing(out / FILE_NAME).settings())


def test_force_does_not_delete_a_search_that_is_running(capsys, tmp_path, finished_search):
    space_file, done = finished_search
    out = shutil.copytree(done, tmp_path / "out")
    running = Store(out / FILE_NAME)  # holds the search's lock, as a live search does
    try:
        before = digest(out)
        for flag in ("--force", "--resume"):
            assert_one_error_line(
                *cli(capsys, "search", space_file, out, "--budget", 2, flag, "--quiet"),
                f"{out / FILE_NAME} is in use by another search",
            )
        assert digest(out) == before
    finally:
        running.close()
