"""The search record: one SQLite file in OUT, a row committed per candidate as soon as it is scored.

Tables: ``settings`` (what the search was started with, to refuse a resume under other
settings), ``candidates`` (index, parameters, recipe, fitness, term values, seconds, worker,
error) and ``report`` (held-out scores of the top candidates and the baselines). A killed
search leaves every finished candidate here; ``--resume`` replays the optimizer against them.
"""

from __future__ import annotations

import json
import math
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from mergesmith.errors import ConfigError, InputFormatError

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
    params: dict            # {"branch": name, label: value, ...}
    recipe: dict
    fitness: float          # inf for a candidate that failed to merge
    details: dict           # term values
    seconds: float
    worker: str
    error: str | None = None


@dataclass(frozen=True)
class ReportRow:
    name: str               # "#12" for a candidate, the file stem for a baseline
    kind: str               # candidate | baseline
    recipe: dict
    fitness: float
    heldout: float
    details: dict           # held-out NLL per text


def _real(value: float) -> float | None:
    return value if math.isfinite(value) else None


class Store:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._db = sqlite3.connect(self.path)
        with self._db:
            self._db.executescript(SCHEMA)

    @classmethod
    def open_existing(cls, path: Path) -> Store:
        if not Path(path).is_file():
            raise InputFormatError(f"{path} not found: there is no search to resume here; run without --resume")
        return cls(path)

    def close(self) -> None:
        self._db.close()

    def settings(self) -> dict:
        return {k: json.loads(v) for k, v in self._db.execute("SELECT key, value FROM settings")}

    def save_settings(self, settings: dict) -> None:
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO settings VALUES (?, ?)",
                                 [(k, json.dumps(v, sort_keys=True)) for k, v in settings.items()])

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
        row = (record.index, json.dumps(record.params), json.dumps(record.recipe), _real(record.fitness),
               json.dumps(record.details), record.seconds, record.worker, record.error,
               datetime.now(timezone.utc).isoformat(timespec="seconds"))
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO candidates VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", row)

    def records(self) -> dict[int, Record]:
        rows = self._db.execute(
            "SELECT idx, params, recipe, fitness, details, seconds, worker, error FROM candidates ORDER BY idx")
        return {
            idx: Record(idx, json.loads(p), json.loads(r), math.inf if f is None else f, json.loads(d), s, w, e)
            for idx, p, r, f, d, s, w, e in rows
        }

    def save_report(self, rows: list[ReportRow]) -> None:
        with self._db:
            self._db.execute("DELETE FROM report")
            self._db.executemany("INSERT INTO report VALUES (?, ?, ?, ?, ?, ?)", [
                (r.name, r.kind, json.dumps(r.recipe), _real(r.fitness), _real(r.heldout), json.dumps(r.details))
                for r in rows
            ])

    def report(self) -> list[ReportRow]:
        rows = self._db.execute("SELECT name, kind, recipe, fitness, heldout, details FROM report")
        return [ReportRow(n, k, json.loads(r), math.inf if f is None else f, math.inf if h is None else h, json.loads(d))
                for n, k, r, f, h, d in rows]
