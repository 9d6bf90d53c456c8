"""After the candidates: held-out scores of the best ones and of the baselines, the plot, the winner.

The held-out texts are scored only here, never during the search, so they say how the winner
does on text it was not chosen on. Baselines are hand-written recipes (their paths relative
to their own files), merged into the same resident model and scored on both splits.

The report is stored with a key of what it scored (held-out settings, the top candidates, the
baseline files' text); resuming a finished search whose key still holds shows the stored report
instead of spending minutes scoring the same numbers again.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import yaml

from mergesmith.api import DEFAULT_CALIBRATION_CACHE, RecipeSource, merge
from mergesmith.config.load import parse_recipe
from mergesmith.output.card import model_card
from mergesmith.search.noise import SELECTION, noise_lines
from mergesmith.search.report import card_section, plot, ranked
from mergesmith.search.settings import resolve_path
from mergesmith.search.store import Record, ReportRow, Store

WINNER_DIR = "winner"
PLOT_FILE = "fitness.png"
REPORT_KEY = "report_key"  # settings entry: what the stored report scored


def heldout_report(prepared, records: list[Record], backend) -> list[ReportRow]:
    """Selection and held-out NLL of the best candidates (``selection.top`` of them with a selection
    split, else ``report.top``), and fitness, selection and held-out NLL of the baselines; scored
    on the search's own workers, each row where a worker is free."""
    tasks = [(k, "report", (f"#{r.index}", r.recipe, None)) for k, r in enumerate(_top(prepared, records))]
    for name in prepared.search.report.baselines:
        path = str(resolve_path(name, prepared.base_dir))
        tasks.append((len(tasks), "report", (Path(name).stem, None, path)))
    rows = dict(backend.run(tasks))
    out = []
    for k, (_, _, (name, recipe, _)) in enumerate(tasks):
        row = rows[k]
        if recipe is not None:  # a candidate's fitness is the search's
            row = replace(row, fitness=next(r.fitness for r in records if f"#{r.index}" == name))
        out.append(row)
    return out


def winner(prepared, records: list[Record], rows) -> Record:
    """The best candidate on the selection split when there is one, else the fitness leaderboard's best."""
    scored = {r.name: r.details[SELECTION] for r in rows if r.kind == "candidate" and SELECTION in r.details}
    if prepared.selection is None or not scored:
        return ranked(records)[0]
    by_name = {f"#{r.index}": r for r in records}
    return by_name[min(scored, key=lambda name: (scored[name], by_name[name].index))]


def _probe(records: list[Record]) -> str:
    return json.dumps(ranked(records)[0].recipe)


def _top(prepared, records: list[Record]) -> list[Record]:
    top = prepared.search.report.top if prepared.selection is None else prepared.search.selection.top
    return [r for r in ranked(records) if math.isfinite(r.fitness)][:top]


def report_key(prepared, records: list[Record], settings: dict) -> str:
    """What a stored report depends on beyond the search's own settings (checked on resume)."""

    def digest(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()

    baselines = [
        (name, digest(resolve_path(name, prepared.base_dir).read_bytes())) for name in prepared.search.report.baselines
    ]
    texts = [digest(t.text.encode()) for term in prepared.heldout.terms for t in term.texts]
    data = {
        "heldout": [settings["heldout"], texts],
        "top": [(r.index, r.recipe) for r in _top(prepared, records)],
        "baselines": baselines,
        "candidates": len(records),
    }  # the card says "the best of N"
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def stored_report(prepared, store: Store, records: list[Record], settings: dict, out: Path) -> list[ReportRow] | None:
    """The stored report when it is what ``finish`` would compute now and the winner is written; else None."""
    if not (out / WINNER_DIR / "README.md").is_file() or not (out / PLOT_FILE).is_file():
        return None
    rows = store.report()
    current = store.settings().get(REPORT_KEY) == report_key(prepared, records, settings)
    return rows if rows and current else None


def finish(
    prepared,
    store: Store,
    records: list[Record],
    settings: dict,
    out: Path,
    seed: int,
    backend,
    on_status: Callable[[str], None] = lambda _: None,
    calibration_cache=DEFAULT_CALIBRATION_CACHE,
) -> list[ReportRow]:
    baselines = len(prepared.search.report.baselines)
    on_status(
        f"scoring the held-out report: {len(_top(prepared, records))} best candidates"
        + (f" and {baselines} baselines" if baselines else "")
    )
    store.save_settings({REPORT_KEY: None})  # set again only once the report and the winner are written
    rows = heldout_report(prepared, records, backend)
    store.save_report(rows)
    on_status("writing the winner")
    plot(records, rows, out / PLOT_FILE, f"{Path(prepared.source).name}: {settings['optimizer']}, seed {seed}")
    best = winner(prepared, records, rows)
    recipe = parse_recipe(best.recipe, prepared.source)
    text = yaml.safe_dump(best.recipe, sort_keys=False)
    card = (
        model_card(recipe, text, out.name, base_dir=prepared.base_dir).rstrip("\n")
        + "\n\n"
        + card_section(records, rows, settings, best, noise_lines(prepared, records, rows, best))
    )
    source = RecipeSource(recipe, text, f"{prepared.source} (candidate #{best.index})", prepared.base_dir, card=card)
    # lora_cache=None: base+adapter inputs are folded on the fly, nothing is written outside OUT
    merge(
        source, out / WINNER_DIR, force=True, seed=seed, workers=1, lora_cache=None, calibration_cache=calibration_cache
    )
    store.save_settings({REPORT_KEY: report_key(prepared, records, settings)})
    return rows
