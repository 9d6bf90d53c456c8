"""PNG pictures of an inspection (a heatmap per model pair) and of a recipe's schedule.

matplotlib (Agg backend) is imported here, inside the functions, so the rest of mergesmith never
needs it. Figures have a fixed size in pixels (``*_size``), saved without tight cropping, and are
written as a hidden sibling renamed into place, so a PNG is whole or absent.
"""

from __future__ import annotations

import itertools
import math
import os
from pathlib import Path

from mergesmith.errors import MergesmithError, OutputWriteError
from mergesmith.inspect.layout import MODULES
from mergesmith.inspect.summary import GLOBAL, grid, labels, model_names, series_label

DPI = 100
_CMAP = "viridis"
_STYLES = ("o-", "s--", "^:", "d-.")


def require_matplotlib():
    """pyplot on the Agg backend, or a one-line error saying how to install it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise MergesmithError(f"plots need matplotlib ({exc}); pip install matplotlib") from None
    return plt


def heatmap_size(columns: int, rows: int, panels: int) -> tuple[int, int]:
    """Pixels of the inspection heatmap: ``columns`` layers (+ global), ``rows`` module types."""
    width = max(640, 240 + 28 * columns)
    return width, 50 + panels * (120 + 30 * rows)


def schedule_size(panels: int) -> tuple[int, int]:
    return 800, 40 + 260 * panels


def _figure(plt, size: tuple[int, int], panels: int):
    # Constrained layout fits labels and colour bars inside the fixed size instead of cropping.
    fig, axes = plt.subplots(
        panels, 1, figsize=(size[0] / DPI, size[1] / DPI), dpi=DPI, squeeze=False, layout="constrained"
    )
    return fig, [ax for row in axes for ax in row]


def save_png(fig, path) -> None:
    """Write ``fig`` to ``path`` whole or not at all (staged as ``.NAME.partial-PID``)."""
    plt = require_matplotlib()
    path = Path(path).absolute()
    staged = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        fig.savefig(staged, format="png", dpi=DPI)
        os.replace(staged, path)
    except OSError as exc:
        raise OutputWriteError(
            f"{path} cannot be written ({exc.strerror}); check the folder's permissions and free space"
        ) from None
    finally:
        plt.close(fig)
        staged.unlink(missing_ok=True)


def _panels(inspection) -> tuple[str, list[tuple[int, ...]], str]:
    """Cosine per pair; with one model and a base, its delta norm (there is no pair)."""
    n = len(inspection.models)
    if n >= 2:
        what = "deltas" if inspection.base is not None else "weights"
        return "cosine", [(i, j) for i in range(n) for j in range(i + 1, n)], f"cosine similarity of the {what}"
    return "delta_norm", [(0,)], "|model - base| / |base|"


def _matrix(inspection, metric: str, index, modules, layers):
    import numpy as np

    g = grid(inspection, metric, index).values
    return np.array([[g.get((layer, m), math.nan) for layer in layers] for m in modules], dtype=float)


def _limits(matrices) -> tuple[float, float]:
    import numpy as np

    finite = np.concatenate([m[np.isfinite(m)] for m in matrices]) if matrices else np.array([])
    if finite.size == 0:
        return 0.0, 1.0
    low, high = float(finite.min()), float(finite.max())
    return (low - 0.01, high + 0.01) if high - low < 1e-9 else (low, high)


def plot_inspection(inspection, path) -> tuple[int, int]:
    """Heatmap (module types x layers, ``global`` last), one panel per model pair; returns its pixel size."""
    plt = require_matplotlib()
    metric, panels, what = _panels(inspection)
    modules = [m for m in MODULES if any(r.module == m for r in inspection.rows)]
    layers = sorted({r.layer for r in inspection.rows if r.layer is not None}) + [None]
    matrices = [_matrix(inspection, metric, index, modules, layers) for index in panels]
    low, high = _limits(matrices)
    size = heatmap_size(len(layers), len(modules), len(panels))
    fig, axes = _figure(plt, size, len(panels))
    names = labels(inspection.models)
    cmap = plt.get_cmap(_CMAP).with_extremes(bad="#dddddd")  # grey: no value (no such tensor, or zero delta)
    step = max(1, math.ceil(len(layers) / 40))
    for ax, index, matrix in zip(axes, panels, matrices):
        image = ax.imshow(matrix, aspect="auto", cmap=cmap, vmin=low, vmax=high, interpolation="nearest")
        ax.set_title(" vs ".join(names[i] for i in index), fontsize=9)
        ax.set_xticks(
            range(0, len(layers), step),
            [GLOBAL if layers[i] is None else str(layers[i]) for i in range(0, len(layers), step)],
            fontsize=7,
        )
        ax.set_yticks(range(len(modules)), modules, fontsize=8)
        ax.set_xlabel("layer (grey: no value, i.e. no such tensor or a zero delta)", fontsize=8)
        ax.set_ylabel("module type", fontsize=8)
        fig.colorbar(image, ax=ax, fraction=0.05, pad=0.01).set_label(what, fontsize=7)
    against = f" (deltas against {labels([inspection.base])[0]})" if inspection.base is not None else ""
    fig.suptitle(f"{what} per layer and module type{against}", fontsize=10)
    save_png(fig, path)
    return size


def _params(schedule) -> list[str]:
    return list(dict.fromkeys(s.param for s in schedule.series))


def _stack_panel(ax, schedule, names) -> None:
    origins = schedule.origins
    ax.plot(range(len(origins)), [o.layer for o in origins], color="#bbbbbb", linewidth=1, zorder=1)
    for model in dict.fromkeys(o.model for o in origins):
        xs = [i for i, o in enumerate(origins) if o.model == model]
        ax.scatter(xs, [origins[i].layer for i in xs], s=14, zorder=2, label=names[model] or labels([model])[0])
    ax.set_xlabel("output layer")
    ax.set_ylabel("source layer")
    ax.set_title("layer stack: which source layer lands where", fontsize=9)
    ax.legend(fontsize=7)


def plot_schedule(schedule, path) -> tuple[int, int]:
    """One panel per numeric parameter (a line per filter and model), plus the layer-stack map."""
    plt = require_matplotlib()
    params = _params(schedule)
    panels = len(params) + int(schedule.is_stack) or 1
    size = schedule_size(panels)
    fig, axes = _figure(plt, size, panels)
    names = model_names(schedule)
    for ax, param in zip(axes, params):
        lines = [s for s in schedule.series if s.param == param]
        for s, style in zip(lines, itertools.cycle(_STYLES)):  # dashes keep coinciding lines visible
            ys = [math.nan if v is None else v for v in s.values]
            ax.plot(range(schedule.num_layers), ys, style, markersize=3, label=series_label(s, names))
        ax.set_xlabel("output layer")
        ax.set_ylabel("t (0 = base model)" if param == "t" else param)
        ax.set_title(f"{param} per layer", fontsize=9)
        ax.legend(fontsize=7)
    if schedule.is_stack:
        _stack_panel(axes[len(params)], schedule, names)
    for ax in axes:  # one x range on every panel: a layer lines up across them
        ax.set_xlim(-0.5, max(schedule.num_layers, 1) - 0.5)
    if not params and not schedule.is_stack:
        axes[0].text(0.5, 0.5, "no numeric per-layer parameters", ha="center", va="center")
        axes[0].set_axis_off()
    fig.suptitle(f"{Path(schedule.source).name}: {schedule.method}, {schedule.num_layers} layers", fontsize=10)
    save_png(fig, path)
    return size
