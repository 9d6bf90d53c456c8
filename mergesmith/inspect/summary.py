"""An inspection grouped per layer and module type, and its terminal tables (100 columns).

A group's value is the mean of its tensors' values weighted by their sizes (entries), over the
tensors where the value is defined (a zero delta has no cosine). Tensors outside the layer stack
(embeddings, final norm, head) form the row ``global``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

from mergesmith.inspect.layout import MODULES
from mergesmith.inspect.models import Inspection, TensorRow

GLOBAL = "global"
# metric -> (title, per pair or per model, number format)
METRICS = {
    "cosine": ("cosine similarity of the {what}", "pair", "{:.4f}"),
    "rel_l2": ("relative L2 distance |a - b| / mean(|a|, |b|)", "pair", "{:.4g}"),
    "delta_norm": ("delta norm relative to the base, |model - base| / |base|", "model", "{:.4g}"),
    "sign_agreement": ("sign agreement of the deltas (where both are non-zero)", "pair", "{:.4f}"),
    "topk_energy": ("share of the delta's energy in its top-{k} singular directions", "model", "{:.4f}"),
}
_LABEL, _CELL = 8, 11


@dataclass(frozen=True)
class Grid:
    """One metric for one pair (or model): ``values[(layer, module)]``, layer None for global."""

    metric: str
    index: tuple[int, ...]  # (i, j) for a pair, (i,) for a model
    values: dict


def value(row: TensorRow, metric: str, index: tuple[int, ...]) -> float | None:
    data = getattr(row, metric)
    for i in index:
        if data is None:
            return None
        data = data[i]
    return data


def grid(inspection: Inspection, metric: str, index: tuple[int, ...]) -> Grid:
    sums: dict = defaultdict(lambda: [0.0, 0])
    for row in inspection.rows:
        v = value(row, metric, index)
        if v is not None:
            cell = sums[(row.layer, row.module)]
            cell[0] += v * row.numel
            cell[1] += row.numel
    return Grid(metric, index, {key: total / size for key, (total, size) in sums.items()})


def metrics(inspection: Inspection) -> list[str]:
    names = ["cosine", "rel_l2"]
    return names + (["delta_norm", "sign_agreement", "topk_energy"] if inspection.base is not None else [])


def indices(inspection: Inspection, metric: str) -> list[tuple[int, ...]]:
    n = len(inspection.models)
    if METRICS[metric][1] == "model":
        return [(i,) for i in range(n)]
    return [(i, j) for i in range(n) for j in range(i + 1, n)]


def labels(keys: Sequence[str]) -> list[str]:
    """Short names: a reference's last path part (an adapter's for ``base+adapter``), unless two clash."""
    short = [PurePosixPath(k.split("+")[-1].split("@")[0].rstrip("/")).name or k for k in keys]
    return short if len(set(short)) == len(short) else list(keys)


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else "…" + text[-(width - 1) :]


def _title(inspection: Inspection, g: Grid, names: list[str]) -> str:
    title, _, _ = METRICS[g.metric]
    title = title.format(what="deltas" if inspection.base is not None else "weights", k=inspection.top_k)
    who = " vs ".join(names[i] for i in g.index)
    return _fit(f"{title}: {who}", 100)


def _table(g: Grid, modules: list[str], layers: list) -> list[str]:
    fmt = METRICS[g.metric][2]
    lines = ["layer".ljust(_LABEL) + "".join(m.rjust(_CELL) for m in modules)]
    for layer in layers:
        cells = [g.values.get((layer, m)) for m in modules]
        if all(c is None for c in cells):
            continue
        label = GLOBAL if layer is None else str(layer)
        lines.append(label.ljust(_LABEL) + "".join(("-" if c is None else fmt.format(c)).rjust(_CELL) for c in cells))
    return lines


def summary_text(inspection: Inspection) -> str:
    """Every metric per layer and module type: one table per model pair (or model)."""
    names = [_fit(n, 30) for n in labels(inspection.models)]
    modules = [m for m in MODULES if any(r.module == m for r in inspection.rows)]
    layers = [None] + sorted({r.layer for r in inspection.rows if r.layer is not None})
    against = f" against base '{inspection.base}'" if inspection.base is not None else ""
    head = [
        _fit(
            f"inspect: {len(inspection.models)} models{against}: {len(inspection.rows)} tensors compared"
            + (
                f", {len(inspection.skipped)} skipped (not in every model, or not floating point)"
                if inspection.skipped
                else ""
            ),
            100,
        )
    ]
    if names != list(inspection.models):
        head += [_fit(f"  {n} = {k}", 100) for n, k in zip(names, inspection.models)]
    for metric in metrics(inspection):
        for index in indices(inspection, metric):
            g = grid(inspection, metric, index)
            head += ["", _title(inspection, g, names), *_table(g, modules, layers)]
    return "\n".join(head)


def model_names(schedule) -> dict[str, str]:
    """Short names of a schedule's models; all "" when there is only one (nothing to tell apart)."""
    models = sorted({s.model for s in schedule.series if s.model is not None} | {o.model for o in schedule.origins})
    return dict(zip(models, labels(models) if len(models) > 1 else [""] * len(models)))


def series_label(series, names: dict[str, str] | None = None) -> str:
    """``t self_attn``, ``weight[ft1] mlp``; the filter is left out when the recipe gives none, the
    model when ``names`` gives it no name."""
    name = (names or {}).get(series.model, series.model)
    model = f"[{name}]" if series.model is not None and name else ""
    return f"{series.param}{model}" + ("" if series.filter == "all" else f" {series.filter}")


def _number(v: float | None) -> str:
    return "-" if v is None else f"{v:.4g}"


def schedule_text(schedule, per_block: int = 7) -> str:
    """The schedule as tables: a row per output layer, a column per series (blocks of ``per_block``),
    and for a layer stack the source model and layer of each output layer."""
    names = model_names(schedule)
    lines = [
        _fit(
            f"{schedule.source}: {schedule.method}, {schedule.num_layers} output layers, "
            f"{len(schedule.series)} parameter series",
            100,
        )
    ]
    columns = [(series_label(s, names), s.values) for s in schedule.series]
    if schedule.is_stack:
        columns.append(("source layer", tuple(f"{names[o.model]}:{o.layer}".lstrip(":") for o in schedule.origins)))
    width = min(26, max([_CELL] + [len(c[0]) + 2 for c in columns]))
    per_block = max(1, min(per_block, (100 - _LABEL) // width))
    for start in range(0, len(columns), per_block):
        block = columns[start : start + per_block]
        lines += ["", "layer".ljust(_LABEL) + "".join(_fit(t, width - 1).rjust(width) for t, _ in block)]
        for i in range(schedule.num_layers):
            cells = [v[i] if isinstance(v[i], str) else _number(v[i]) for _, v in block]
            lines.append(str(i).ljust(_LABEL) + "".join(_fit(c, width - 1).rjust(width) for c in cells))
    if not columns:
        lines.append("no numeric per-layer parameters and no layer moves")
    return "\n".join(lines)
