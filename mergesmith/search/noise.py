"""How sure a ranking is: the paired difference of two candidates' fitness and its standard error.

Two candidates scored on the same windows differ by

    D = Σ_j c_j (m_A,j − m_B,j),    c_j = w_term / #texts · n_j / N_text

where window j of a text scores n_j of its N_text tokens and m_j is that window's mean NLL (or KL)
per token, so that D is exactly the difference of the two fitness values on those windows. The
window differences d_j = m_A,j − m_B,j are treated as independent draws around their text's mean:

    SE(D) = sqrt(Σ_j c_j² · s²),   s² = Σ_text Σ_j (d_j − d̄_text)² / (#windows − #texts)

(for equal windows of one text this is the textbook sd(d)/√n). Pairing removes what the windows
share (how hard the passage is), which is most of their variance. Only windows both candidates
were scored on count. Accuracy terms are taken as exact (they add no variance). A lead is
"inside the noise" when it is less than ``CLEAR`` standard errors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mergesmith.search.fitness import WINDOWS, Objective

CLEAR = 2.0  # a lead of fewer standard errors than this is called inside the noise


@dataclass(frozen=True)
class Paired:
    diff: float  # fitness of A minus fitness of B on the shared windows (negative: A is better)
    se: float  # nan when too few windows to estimate it
    windows: int  # shared windows, all texts together

    @property
    def clear(self) -> bool:
        return math.isfinite(self.se) and abs(self.diff) >= CLEAR * self.se and self.diff != 0

    def text(self) -> str:
        se = "?" if not math.isfinite(self.se) else f"{self.se:.4f}"
        ratio = f", {abs(self.diff) / self.se:.1f} SE" if math.isfinite(self.se) and self.se > 0 else ""
        return f"{self.diff:+.4f} ± {se}{ratio}"


def paired(obj: Objective, a: dict, b: dict) -> Paired:
    """A − B from two ``Scorer.raw`` results (rungs concatenated) on their shared windows."""
    diff, weights, sq, count, texts = 0.0, 0.0, 0.0, 0, 0
    for k, term in enumerate(obj.terms):
        if term.metric == "accuracy":
            if str(k) in a and str(k) in b:
                diff += term.weight * (a[str(k)][0] - b[str(k)][0])
            continue
        column = 0 if term.metric == "nll" else 2
        for i in range(len(term.texts)):
            wa, wb = a.get(f"{k}/{i}", []), b.get(f"{k}/{i}", [])
            shared = min(len(wa), len(wb))
            if not shared:
                continue
            tokens = sum(w[1] for w in wa[:shared])
            d = [x[column] / x[1] - y[column] / y[1] for x, y in zip(wa[:shared], wb[:shared])]
            c = [term.weight / len(term.texts) * x[1] / tokens for x in wa[:shared]]
            diff += sum(ci * di for ci, di in zip(c, d))
            weights += sum(ci * ci for ci in c)
            mean = sum(d) / shared
            sq += sum((di - mean) ** 2 for di in d)
            count, texts = count + shared, texts + 1
    se = math.sqrt(weights * sq / (count - texts)) if count > texts else math.nan
    return Paired(diff, se, count)


SELECTION, SELECTION_WINDOWS, HELDOUT_WINDOWS = "selection", "selection_windows", "heldout_windows"


def verdict(p: Paired) -> str:
    """``p`` is other − winner: how the winner's lead reads."""
    if not math.isfinite(p.se):
        return "too few windows to tell the noise"
    if p.diff <= 0:
        return "the winner is not ahead" + ("" if -p.diff < CLEAR * p.se else " (clearly behind)")
    return f"clear (≥ {CLEAR:g} SE)" if p.clear else f"inside the noise (< {CLEAR:g} SE)"


def _line(split: str, winner: str, other: str, p: Paired) -> str:
    return f"{split}: {other} − {winner} = {p.text()} on {p.windows} paired windows: {verdict(p)}"


def noise_lines(prepared, records, rows, best) -> list[str]:
    """How far the winner's lead is above the noise: on fitness (leader vs runner-up), on selection
    (winner vs the next best there) and on held-out (winner vs every other row of the report)."""
    from mergesmith.search.report import ranked

    lines = []
    board = [r for r in ranked(records) if math.isfinite(r.fitness) and WINDOWS in r.details]
    if len(board) >= 2:
        p = paired(prepared.objective, board[1].details[WINDOWS], board[0].details[WINDOWS])
        lines.append(_line("fitness", f"#{board[0].index}", f"#{board[1].index}", p))
    mine = next((r for r in rows if r.name == f"#{best.index}"), None)
    if mine is None:
        return lines
    if prepared.selection is not None and SELECTION_WINDOWS in mine.details:
        others = sorted(
            (r for r in rows if r is not mine and SELECTION in r.details), key=lambda r: r.details[SELECTION]
        )
        if others:
            p = paired(prepared.selection, others[0].details[SELECTION_WINDOWS], mine.details[SELECTION_WINDOWS])
            lines.append(_line("selection", mine.name, others[0].name, p))
    for other in rows:
        if other is not mine and HELDOUT_WINDOWS in other.details and HELDOUT_WINDOWS in mine.details:
            p = paired(prepared.heldout, other.details[HELDOUT_WINDOWS], mine.details[HELDOUT_WINDOWS])
            lines.append(_line("held-out", mine.name, other.name, p))
    return lines
