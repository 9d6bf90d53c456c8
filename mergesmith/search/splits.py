"""Three disjoint text splits: fitness (drives the optimizer), selection (picks the winner among the
best), held-out (the report only).

Bundled texts come in all three (``kjv_fitness``, ``kjv_selection``, ``kjv_heldout``: other books
of the same corpus). A search file with a ``selection:`` section whose fitness names a single text
file of its own, and no selection texts, has that file cut in three at line boundaries: the first
60 % of its bytes score candidates, the next 20 % select, the last 20 % are held out (the report's
default texts). The cut depends on the bytes alone, so a search repeats.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mergesmith.errors import ConfigError, InputFormatError
from mergesmith.eval.data import DATA_DIR, Text, read_text
from mergesmith.search.settings import SearchFile, resolve_text

SHARES = (0.6, 0.2, 0.2)
PARTS = ("fitness", "selection", "heldout")
SELECTION_SUFFIX = "_selection"
FITNESS_SUFFIX = "_fitness"


@dataclass(frozen=True)
class Splits:
    fitness: dict[str, Text]  # text name as written in a fitness term -> the text scored for it
    selection: tuple[Text, ...]  # empty without a selection section
    heldout: tuple[Text, ...] | None  # None: the report's own default


def split_text(text: Text) -> tuple[Text, ...]:
    """``text`` cut at the line boundaries nearest 60 % and 80 % of its bytes: fitness, selection, held-out."""
    lines = text.text.splitlines(keepends=True)
    total = sum(len(line.encode("utf-8")) for line in lines)
    cuts, size, parts, current = [total * SHARES[0], total * (SHARES[0] + SHARES[1])], 0, [], []
    for line in lines:
        if cuts and size >= cuts[0] and current:
            parts.append("".join(current))
            current, cuts = [], cuts[1:]
        current.append(line)
        size += len(line.encode("utf-8"))
    parts.append("".join(current))
    if len(parts) != 3 or not all(p.strip() for p in parts):
        raise InputFormatError(
            f"{text.path}: too few lines to cut into fitness, selection and held-out parts (60/20/20 % of its "
            "bytes at line boundaries); give a longer text, or name selection.texts and report.texts"
        )
    return tuple(Text(f"{text.name}[{part}]", f"{text.path}#{part}", body) for part, body in zip(PARTS, parts))


def _fitness_names(search: SearchFile) -> list[str]:
    return list(dict.fromkeys(t for term in search.fitness.terms for t in (term.nll or term.kl or ())))


def _bundled(path: Path) -> bool:
    return path.parent == (DATA_DIR / "text").resolve()


def splits(search: SearchFile, base_dir: Path) -> Splits:
    """The texts of each split, checked disjoint (by content)."""
    names = _fitness_names(search)
    paths = {n: resolve_text(n, base_dir) for n in names}
    fitness = {n: read_text(p) for n, p in paths.items()}
    if search.selection is None:
        return Splits(fitness, (), None)
    heldout = None
    if search.selection.texts is not None:
        selection = tuple(read_text(resolve_text(t, base_dir)) for t in search.selection.texts)
    elif len(names) == 1 and not _bundled(paths[names[0]]):
        fit, sel, held = split_text(fitness[names[0]])
        fitness, selection = {names[0]: fit}, (sel,)
        heldout = None if search.report.texts is not None else (held,)
    elif all(_bundled(p) and p.stem.endswith(FITNESS_SUFFIX) for p in paths.values()):
        stems = [p.stem.removesuffix(FITNESS_SUFFIX) + SELECTION_SUFFIX for p in paths.values()]
        selection = tuple(read_text(DATA_DIR / "text" / f"{s}.txt") for s in stems)
    else:
        raise ConfigError(
            "selection.texts: name the selection texts (text the fitness terms do not score); only bundled "
            "*_fitness texts or a single fitness file have a default"
        )
    _check_disjoint(selection, fitness.values(), "selection", "fitness")
    return Splits(fitness, selection, heldout)


def _check_disjoint(texts, others, name: str, other: str) -> None:
    seen = {t.text: t for t in others}
    for text in texts:
        if text.text in seen:
            raise ConfigError(
                f"{name} text {text.path} is also a {other} text ({seen[text.text].path}); the splits must be "
                "disjoint: give other texts"
            )


def check_heldout(heldout, fitness_splits: Splits) -> None:
    """The held-out texts are neither fitness nor selection texts."""
    _check_disjoint(heldout, fitness_splits.fitness.values(), "report", "fitness")
    _check_disjoint(heldout, fitness_splits.selection, "report", "selection")
