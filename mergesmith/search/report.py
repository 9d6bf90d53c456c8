"""What a search shows: the leaderboard (terminal and model card), the fitness plot, the card section.

Pure formatting over the stored records; the plot needs matplotlib (the ``search`` extra).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

from mergesmith.errors import MergesmithError
from mergesmith.search.store import Record, ReportRow

SEARCH_HEADING = "## Search"
CARD_ROWS = 10


def ranked(records: Sequence[Record]) -> list[Record]:
    """Best first: the highest racing rung reached (most windows scored), then the lowest fitness
    there; ties keep evaluation order; failed candidates last."""
    return sorted(records, key=lambda r: (not math.isfinite(r.fitness), -r.details.get("rung", 0), r.fitness, r.index))


def params_text(params: dict) -> str:
    values = [f"{k}={_value(v)}" for k, v in params.items() if k != "branch"]
    return f"{params.get('branch', '')}: " + (", ".join(values) if values else "as written")


def _value(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v).lower() if isinstance(v, bool) else str(v)


def _num(value: float | None, digits: int = 4) -> str:
    return "—" if value is None else "failed" if not math.isfinite(value) else f"{value:.{digits}f}"


def _rows(records: Sequence[Record], report: Sequence[ReportRow], top: int, best: Record | None) -> list[list[str]]:
    heldout = {r.name: r.heldout for r in report if r.kind == "candidate"}
    selection = {r.name: r.details.get("selection") for r in report}
    with_selection = any(v is not None for v in selection.values())
    rows = []
    for rank, r in enumerate(ranked(records)[:top], 1):
        name = f"#{r.index}" + (" (winner)" if best is not None and with_selection and r.index == best.index else "")
        recipe = params_text(r.params) if r.error is None else f"{params_text(r.params)} ({r.error})"
        if r.details.get("rung"):
            recipe += f" [rung {r.details['rung']}]"
        rows.append(
            [str(rank), name, _num(r.fitness), _num(heldout.get(f"#{r.index}"))]
            + ([_num(selection.get(f"#{r.index}"))] if with_selection else [])
            + [f"{r.seconds:.1f}", r.worker, recipe]
        )
    for b in (r for r in report if r.kind == "baseline"):
        extra = [_num(selection.get(b.name))] if with_selection else []
        rows.append(["base", b.name, _num(b.fitness), _num(b.heldout), *extra, "", "", "hand-written recipe"])
    return rows


HEADER = ["rank", "candidate", "fitness", "held-out NLL", "seconds", "worker", "recipe"]


def _header(report: Sequence[ReportRow]) -> list[str]:
    if any("selection" in r.details for r in report):
        return HEADER[:4] + ["selection NLL"] + HEADER[4:]
    return HEADER


def leaderboard_table(
    records: Sequence[Record], report: Sequence[ReportRow] = (), top: int = 10, best: Record | None = None
) -> str:
    """A plain-text table for the terminal: the best ``top`` candidates, then the baselines."""
    header = _header(report)
    rows = [header] + _rows(records, report, top, best)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1] for row in rows)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def card_section(
    records: Sequence[Record],
    report: Sequence[ReportRow],
    settings: dict,
    best: Record | None = None,
    noise: Sequence[str] = (),
) -> str:
    """The model card's search section: settings, winner vs baselines on the splits, leaderboard, noise."""
    best = best or ranked(records)[0]
    header = _header(report)
    rows = _rows(records, report, CARD_ROWS, best)
    table = "\n".join("| " + " | ".join(_cell(c) for c in row) + " |" for row in rows)
    space = "\n".join(f"- {line}" for line in settings["space"])
    selection = settings.get("selection")
    chosen = "and picked on the selection split " if selection else ""
    lead = "\n".join(f"- {line}" for line in noise)
    return (
        f"{SEARCH_HEADING}\n\n"
        f"This recipe is candidate #{best.index}, the best of {len(records)} scored by `mergesmith search` "
        f"{chosen}(optimizer {settings['optimizer']}, seed {settings['seed']}, budget {settings['budget']}, "
        f"{settings['backend']}).\n\n"
        f"- Fitness (lower is better): {settings['fitness']}\n"
        + (
            f"- Selection (picks the winner among the best; the optimizer never saw it): {selection}\n"
            if selection
            else ""
        )
        + f"- Held-out (the report split, never scored during the search): {settings['heldout']}\n"
        f"- Merge seed of random methods: {settings['seed']}; model paths are as written in "
        f"`{Path(settings['search_file']).name}`, relative to its folder\n\n"
        f"Search space:\n\n{space}\n\n"
        f"| {' | '.join(header)} |\n|{'---|' * len(header)}\n{table}\n"
        + (
            f"\nPaired differences (± standard error over windows; see `mergesmith/search/noise.py`):\n\n{lead}\n"
            if lead
            else ""
        )
    )


def plot(records: Sequence[Record], report: Sequence[ReportRow], path: Path, title: str) -> None:
    """Fitness of each candidate in evaluation order, the best so far, and the baselines."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise MergesmithError(f"the fitness plot needs matplotlib ({exc}); pip install 'mergesmith[search]'") from None
    scored = sorted((r for r in records if math.isfinite(r.fitness)), key=lambda r: r.index)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    ax.scatter([r.index for r in scored], [r.fitness for r in scored], s=14, color="tab:blue", label="candidate")
    best, steps = math.inf, []
    for r in scored:
        best = min(best, r.fitness)
        steps.append(best)
    ax.step([r.index for r in scored], steps, where="post", color="tab:orange", label="best so far")
    for b, color in zip(
        (r for r in report if r.kind == "baseline"), ("tab:green", "tab:red", "tab:purple", "tab:brown", "tab:gray")
    ):
        if math.isfinite(b.fitness):
            ax.axhline(b.fitness, linestyle="--", linewidth=1, color=color, label=f"{b.name} (hand-written)")
    ax.set_xlabel("evaluation")
    ax.set_ylabel("fitness (lower is better)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    staged = path.with_name(f".{path.name}.partial-{os.getpid()}")  # the final name only when whole
    try:
        fig.savefig(staged, format="png")
        os.replace(staged, path)
    finally:
        plt.close(fig)
        staged.unlink(missing_ok=True)
