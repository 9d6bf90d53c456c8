"""Parity with mergekit per merge method, for the session summary (conftest.py prints it).

Differential tests append ``(label, Parity)`` to ``parity_log``. A label names the inputs' family
and then the merge method ("qwen2 breadcrumbs_ties bf16"); function-level comparisons start with
"fn" and name the families of their tensors ("fn llama+qwen2 karcher ..."). The first registry
method in a label is its method and the word before it its family; a label naming several
methods (a lineage) or none (an architecture's layer stack) is counted under "other". Merges
under the default TIES tie rule differ from mergekit at threshold ties by design: they are
counted as merges, not in the tensor columns.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from mergesmith.methods.registry import METHODS

TIE_RULE = "tie rule"
FUNCTION_LEVEL = "fn"
OTHER = "other"


@dataclass(frozen=True)
class Attribution:
    method: str  # a registry name, or OTHER
    families: tuple[str, ...]  # the pico families the inputs came from ("" when not named)
    function_level: bool  # a pure-function comparison, not a whole merge
    tie_rule: bool  # under the default tie rule: differences at threshold ties expected


def attribute(label: str) -> Attribution:
    words = label.split()
    found = [(i, w) for i, w in enumerate(words) if w in METHODS]
    methods = {w for _, w in found}
    tie_rule = TIE_RULE in label
    if len(methods) != 1:
        return Attribution(OTHER, (), False, tie_rule)
    index, method = found[0]
    function_level = bool(words) and words[0] == FUNCTION_LEVEL
    family = words[index - 1] if index > 0 else ""
    families = () if family in ("", FUNCTION_LEVEL) else tuple(family.split("+"))
    return Attribution(method, families, function_level, tie_rule)


def _zero() -> list[int]:
    return [0, 0, 0, 0, 0]  # merges, tie-rule merges, exact, within 1 ulp, differing/missing/extra


def per_method_lines(entries) -> list[str]:
    """A table, one row per method (registry order, then other): whole merges, then function-level cases."""
    merges, fns = defaultdict(_zero), defaultdict(_zero)
    families: dict[str, set] = defaultdict(set)
    for label, parity in entries:
        who = attribute(label)
        row = (fns if who.function_level else merges)[who.method]
        row[1 if who.tie_rule else 0] += 1
        if not who.tie_rule:
            row[2] += parity.exact
            row[3] += parity.within_ulp
            row[4] += len(parity.differing) + len(parity.missing) + len(parity.extra)
        if not who.function_level:
            families[who.method].update(who.families)
    order = [m for m in (*METHODS, OTHER) if m in merges or m in fns]
    lines = [
        f"{'method':<17}{'merges':>7}{'tensors':>8}{'exact':>7}{'1 ulp':>6}{'diff':>5}{'tie rule':>9}  "
        f"{'families':<40}{'fn cases':>9}{'exact':>7}{'1 ulp':>6}{'diff':>5}"
    ]
    for method in order:
        m, f = merges[method], fns[method]
        lines.append(
            f"{method:<17}{m[0]:>7}{sum(m[2:]):>8}{m[2]:>7}{m[3]:>6}{m[4]:>5}{m[1]:>9}  "
            f"{', '.join(sorted(families[method])):<40}{f[0]:>9}{f[2]:>7}{f[3]:>6}{f[4]:>5}"
        )
    return lines


# Methods mergekit does not have: each is checked against its authors' reference code instead
# (the test named here, in tests/methods/).
BEYOND_MERGEKIT = {
    "regmean": "test_regmean.py::test_matches_fusion_bench",
    "tsv": "test_tsv.py::test_matches_the_authors_code",
    "iso_c": "test_iso.py::test_iso_c_matches_the_authors_code",
    "iso_cts": "test_iso.py::test_iso_cts_matches_the_authors_code",
}


def missing_coverage(entries, required=("llama", "qwen2")) -> list[str]:
    """ "method on family" for each registry method without a whole merge on a ``required`` family."""
    seen = set()
    for label, _ in entries:
        who = attribute(label)
        if not who.function_level:
            seen.update((who.method, family) for family in who.families)
    return [
        f"{method} on {family}"
        for method in METHODS
        for family in required
        if (method, family) not in seen and method not in BEYOND_MERGEKIT
    ]
