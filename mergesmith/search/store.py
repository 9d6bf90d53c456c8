"""The search record: one SQLite file in OUT, a row committed per candidate as soon as it is scored.

Tables: ``settings`` (what the search was started with, to refuse a resume under other
settings), ``candidates`` (index, parameters, recipe, fitness, term values, seconds, worker,
error) and ``report`` (held-out scores of the top candidates and the baselines). A killed
search leaves every finished candidate here; ``--resume`` replays the optimizer against them.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from mergesmith.errors import ConfigError, InputFormatError, OutputExistsError

FILE_NAME = "search.sqlite"
SCHEMA = """
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS candidates (
    idx INTEGER PRIMARY KEY, params TEXT NOT NULL, recipe TEXT NOT NULL, fitness REAL,
    details TEXT NOT NULL, seconds REAL NOT NULL, worker TEXT NOT NULL, error TEXT, scored_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS report (
    name TEXT PRIMARY KEY, kind TEXT NOT NULL, recipe TEXT NOT NULL, fitness REAL, heldout REAL, details TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class Record:
    index: int
    params: dict  # {"branch": name, label: value, ...}
    recipe: dict
    fitness: float  # inf for a candidate that failed to merge
    details: dict  # term values
    seconds: float
    worker: str
    error: str | None = None


@dataclass(frozen=True)
class ReportRow:
    name: str  # "#12" for a candidate, the file stem for a baseline
    kind: str  # candidate | baseline
    recipe: dict
    fitness: float
    heldout: float
    details: dict  # held-out NLL per text


def _real(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _unreadable(path: Path, why: str) -> InputFormatError:
    return InputFormatError(
        f"{path} is not a readable search database ({why}); it cannot be resumed: start afresh "
        f"with force (--force; replaces {path.parent}) or search into another directory"
    )


def _columns(db: sqlite3.Connection) -> dict[str, list[str]]:
    tables = [name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    return {t: [row[1] for row in db.execute(f"PRAGMA table_info({t})")] for t in tables}


def check_database(path: Path) -> None:
    """Before a resume writes anything: ``path`` is an intact SQLite file with this schema.

    Only read, so a file that is not ours (or is damaged) stays byte-identical. Not opened with
    ``mode=ro``: after a kill mid-commit SQLite must roll the journal back, which is a write.
    """
    expected = _expected_columns()
    try:
        db = sqlite3.connect(path)
        try:
            check = db.execute("PRAGMA quick_check").fetchall()  # reads every page: finds truncation
            if check != [("ok",)]:
                raise _unreadable(path, f"damaged: {check[0][0]}")
            _check_tables(path, _columns(db), expected)
            _check_json(path, db)
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:  # "file is not a database", "database disk image is malformed"
        raise _unreadable(path, str(exc)) from None


def _check_tables(path: Path, found: dict, expected: dict) -> None:
    if not found:
        raise _unreadable(path, "it holds no tables: the search never started")
    for table, columns in expected.items():
        if table not in found:
            raise _unreadable(path, f"table '{table}' is missing")
        if missing := [c for c in columns if c not in found[table]]:
            raise _unreadable(path, f"table '{table}' lacks column '{missing[0]}'")


def _check_json(path: Path, db: sqlite3.Connection) -> None:
    """Every JSON column decodes: a hand-edited row is named here, before the resume writes anything."""
    queries = {
        "settings": "SELECT key, value FROM settings",
        "candidate": "SELECT '#' || idx, params, recipe, details FROM candidates",
        "report row": "SELECT name, recipe, details FROM report",
    }
    for what, query in queries.items():
        for name, *values in db.execute(query):
            for value in values:
                try:
                    json.loads(value)
                except (TypeError, ValueError) as exc:
                    raise _unreadable(path, f"{what} {name}: {exc}") from None


def _expected_columns() -> dict[str, list[str]]:
    """The tables and columns of SCHEMA, read from an in-memory database built from it."""
    db = sqlite3.connect(":memory:")
    try:
        db.executescript(SCHEMA)
        return _columns(db)
    finally:
        db.close()


def _lock(fd: int, path: Path) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise OutputExistsError(
            f"{path} is in use by another search; wait for it to finish or search into another directory"
        ) from None


class Store:
    """The database; while open, an exclusive ``flock`` on the file keeps a second search out of it
    (released by the kernel if this process is killed)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._db = sqlite3.connect(self.path)
        self._lock = os.open(self.path, os.O_RDONLY)
        try:
            _lock(self._lock, self.path)
            with self._db:
                self._db.executescript(SCHEMA)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def check_free(path: Path) -> None:
        """Refuse when a live search holds ``path`` (before --force deletes it under that search)."""
        fd = os.open(path, os.O_RDONLY)
        try:
            _lock(fd, path)
        finally:
            os.close(fd)  # releases the lock

    @classmethod
    def open_existing(cls, path: Path) -> Store:
        if not Path(path).is_file():
            raise InputFormatError(
                f"{path} not found: there is no search to resume here; run without resume (--resume)"
            )
        check_database(path)
        return cls(path)

    def close(self) -> None:
        self._db.close()
        os.close(self._lock)

    def settings(self) -> dict:
        return {k: json.loads(v) for k, v in self._db.execute("SELECT key, value FROM settings")}

    def save_settings(self, settings: dict) -> None:
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO settings VALUES (?, ?)",
                [(k, json.dumps(v, sort_keys=True)) for k, v in settings.items()],
            )

    def check_settings(self, settings: dict, keys: tuple[str, ...]) -> None:
        """A resume must use the settings the search started with, for the keys that shape its results."""
        stored = self.settings()
        for key in keys:
            if key in stored and stored[key] != json.loads(json.dumps(settings[key], sort_keys=True)):
                raise ConfigError(
                    f"{self.path}: the search was started with {key} {stored[key]!r}, now {settings[key]!r}; "
                    "resume with the same settings, or start a new search in another directory"
                )

    def add(self, record: Record) -> None:
        row = (
            record.index,
            json.dumps(record.params),
            json.dumps(record.recipe),
            _real(record.fitness),
            json.dumps(record.details),
            record.seconds,
            record.worker,
            record.error,
            datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO candidates VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", row)

    def records(self) -> dict[int, Record]:
        rows = self._db.execute(
            "SELECT idx, params, recipe, fitness, details, seconds, worker, error FROM candidates ORDER BY idx"
        )
        return {
            idx: Record(idx, json.loads(p), json.loads(r), math.inf if f is None else f, json.loads(d), s, w, e)
            for idx, p, r, f, d, s, w, e in rows
        }

    def save_report(self, rows: list[ReportRow]) -> None:
        with self._db:
            self._db.execute("DELETE FROM report")
            self._db.executemany(
                "INSERT INTO report VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (r.name, r.kind, json.dumps(r.recipe), _real(r.fitness), _real(r.heldout), json.dumps(r.details))
                    for r in rows
                ],
            )

    def report(self) -> list[ReportRow]:
        rows = self._db.execute("SELECT name, kind, recipe, fitness, heldout, details FROM report")
        return [
            ReportRow(n, k, json.loads(r), math.inf if f is None else f, math.inf if h is None else h, json.loads(d))
            for n, k, r, f, h, d in rows
        ]
