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
from pathlib import Path

import torch
import yaml

from mergesmith.api import RecipeSource, merge, model_keys, read_recipe
from mergesmith.config.load import parse_recipe
from mergesmith.io.resolve import close_models, open_models
from mergesmith.output.card import model_card
from mergesmith.plan.planner import build_plan
from mergesmith.search.fitness import Scorer
from mergesmith.search.report import card_section, plot, ranked
from mergesmith.search.resident import Evaluator, Setup
from mergesmith.search.settings import resolve_path
from mergesmith.search.store import Record, ReportRow, Store

WINNER_DIR = "winner"
PLOT_FILE = "fitness.png"
REPORT_KEY = "report_key"  # settings entry: what the stored report scored


def _baseline(evaluator: Evaluator, heldout: Scorer, path: Path, seed: int) -> ReportRow:
    src = read_recipe(path)
    models = open_models(model_keys(src.recipe), base_dir=src.base_dir)
    try:
        evaluator.load(build_plan(src.recipe, models, source=src.name, seed=seed), models)
    finally:
        close_models(models)
    fitness, details = evaluator.scorer.score()
    held, held_details = heldout.score()
    recipe = yaml.safe_load(src.text)
    return ReportRow(path.stem, "baseline", recipe, fitness, held, {**details, **held_details})


def heldout_report(prepared, records: list[Record], seed: int, threads: int) -> list[ReportRow]:
    """Held-out NLL of the ``report.top`` best candidates, fitness and held-out NLL of the baselines."""
    before = torch.get_num_threads()
    setup = Setup(
        prepared.source, str(prepared.base_dir), prepared.keys, _probe(records), prepared.objective, seed, threads
    )
    evaluator = Evaluator(setup, "report")
    try:
        heldout = Scorer(evaluator.scorer.target, prepared.heldout)
        rows = []
        for record in _top(prepared, records):
            evaluator.load(evaluator.plan(record.recipe))
            held, details = heldout.score()
            rows.append(ReportRow(f"#{record.index}", "candidate", record.recipe, record.fitness, held, details))
        for name in prepared.search.report.baselines:
            rows.append(_baseline(evaluator, heldout, resolve_path(name, prepared.base_dir), seed))
        return rows
    finally:
        evaluator.close()
        torch.set_num_threads(before)


def _probe(records: list[Record]) -> str:
    return json.dumps(ranked(records)[0].recipe)


def _top(prepared, records: list[Record]) -> list[Record]:
    return [r for r in ranked(records) if math.isfinite(r.fitness)][: prepared.search.report.top]


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
    threads: int,
    on_status: Callable[[str], None] = lambda _: None,
) -> list[ReportRow]:
    baselines = len(prepared.search.report.baselines)
    on_status(
        f"scoring the held-out report: {len(_top(prepared, records))} best candidates"
        + (f" and {baselines} baselines" if baselines else "")
    )
    store.save_settings({REPORT_KEY: None})  # set again only once the report and the winner are written
    rows = heldout_report(prepared, records, seed, threads)
    store.save_report(rows)
    on_status("writing the winner")
    plot(records, rows, out / PLOT_FILE, f"{Path(prepared.source).name}: {settings['optimizer']}, seed {seed}")
    best = ranked(records)[0]
    recipe = parse_recipe(best.recipe, prepared.source)
    text = yaml.safe_dump(best.recipe, sort_keys=False)
    card = (
        model_card(recipe, text, out.name, base_dir=prepared.base_dir).rstrip("\n")
        + "\n\n"
        + card_section(records, rows, settings)
    )
    source = RecipeSource(recipe, text, f"{prepared.source} (candidate #{best.index})", prepared.base_dir, card=card)
    # lora_cache=None: base+adapter inputs are folded on the fly, nothing is written outside OUT
    merge(source, out / WINNER_DIR, force=True, seed=seed, workers=1, lora_cache=None)
    store.save_settings({REPORT_KEY: report_key(prepared, records, settings)})
    return rows
