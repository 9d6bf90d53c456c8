"""The ranked table that ``mergesmith eval`` prints: one row per model, best first."""

from __future__ import annotations

from mergesmith.eval.results import EvalResult, ModelScore


def _columns(result: EvalResult) -> list[str]:
    first = result.models[0]
    cols = []
    for t in first.texts:
        cols += [f"ppl {t.text}", f"bpb {t.text}"]
        if result.ref is not None:
            cols += [f"KL {t.text}", f"top1 {t.text}"]
    for t in first.tasks:
        cols += [f"acc {t.task}", f"acc_norm {t.task}"]
    cols += [s.name for s in first.lm_eval]
    return cols + ["seconds"]


def _cells(score: ModelScore, has_ref: bool) -> list[str]:
    cells = []
    for t in score.texts:
        cells += [f"{t.ppl:.3f}", f"{t.bits_per_byte:.4f}"]
        if has_ref:
            cells += ["-", "-"] if t.kl is None else [f"{t.kl.mean:.3g}", f"{t.kl.top1:.4f}"]
    for t in score.tasks:
        cells += [f"{t.acc:.3f}", f"{t.acc_norm:.3f}"]
    cells += [f"{s.value:.3f}" for s in score.lm_eval]
    return cells + [f"{score.seconds:.1f}"]


def render_table(result: EvalResult) -> str:
    """Aligned columns; the reference is marked ``(ref)``; a footer says what was measured."""
    head = ["rank", "model"] + _columns(result)
    rows = [head]
    for i, score in enumerate(result.ranked(), 1):
        name = score.model + (" (ref)" if score.is_ref else "")
        rows.append([str(i), name] + _cells(score, result.ref is not None))
    widths = [max(len(r[c]) for r in rows) for c in range(len(head))]
    lines = ["  ".join(cell.ljust(w) if c < 2 else cell.rjust(w) for c, (cell, w) in enumerate(zip(r, widths))).rstrip() for r in rows]
    key = "mean bits per byte over texts" if result.models[0].texts else "mean accuracy over tasks"
    lines.append(f"# ranked by {key}; context {result.context}, stride {result.stride}, dtype {result.dtype}"
                 + (f", limit {result.limit}" if result.limit else "") + f", {result.date}")
    return "\n".join(lines)
