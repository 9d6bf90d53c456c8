"""The per-method parity summary: labels are attributed to the right method and family, and the
table adds up (tests/parity_summary.py; conftest.py prints it)."""

from __future__ import annotations

from parity_summary import OTHER, attribute, missing_coverage, per_method_lines
from reference import Parity


def _parity(exact: int, ulp: int = 0, differing: tuple = ()) -> Parity:
    return Parity(exact, ulp, list(differing), [], [], {name: "max 2 ulp" for name in differing})


def test_labels_name_family_then_method():
    who = attribute("qwen2 breadcrumbs_ties bf16")  # not breadcrumbs, not ties
    assert (who.method, who.families, who.function_level, who.tie_rule) == (
        "breadcrumbs_ties",
        ("qwen2",),
        False,
        False,
    )
    assert attribute("llama48 passthrough recipe 4 (47 layers)").families == ("llama48",)
    assert attribute("arch gemma2 slerp").method == "slerp"
    who = attribute("fn llama+qwen2 della_linear (3 inputs, base; rescale=False) x 3 dtypes x 6 tensors")
    assert (who.method, who.families, who.function_level) == ("della_linear", ("llama", "qwen2"), True)
    assert attribute("llama ties default tie rule (12 entries at threshold ties)").tie_rule


def test_several_methods_or_none_count_as_other():
    assert attribute("lineage linear → slerp → task_arithmetic (final)").method == OTHER
    assert attribute("arch qwen3 stack").method == OTHER


def test_table_rows_add_up_and_keep_tie_rule_merges_out_of_the_tensor_columns():
    entries = [
        ("llama ties", _parity(30, 1)),
        ("qwen2 ties", _parity(28, 0, ("a", "b"))),
        ("qwen2 ties default tie rule (5 entries at threshold ties)", _parity(20, 0, ("c",) * 9)),
        ("fn llama+qwen2 ties (3 inputs, base) x 3 dtypes x 6 tensors", _parity(18)),
        ("lineage linear → slerp (final)", _parity(39)),
    ]
    header, *rows = per_method_lines(entries)
    assert header.split()[:4] == ["method", "merges", "tensors", "exact"]
    by_method = {row.split()[0]: row.split() for row in rows}
    assert list(by_method) == ["ties", OTHER]
    # merges, tensors, exact, 1 ulp, diff, tie rule, families..., fn cases, exact, 1 ulp, diff
    assert by_method["ties"] == ["ties", "2", "61", "58", "1", "2", "1", "llama,", "qwen2", "1", "18", "0", "0"]
    assert by_method[OTHER][:7] == [OTHER, "1", "39", "39", "0", "0", "0"]


def test_missing_coverage_names_method_and_family():
    entries = [("llama karcher fp32", _parity(3)), ("qwen2 karcher fp32", _parity(3)), ("llama sce bf16", _parity(3))]
    missing = missing_coverage(entries)
    assert "karcher on llama" not in missing and "karcher on qwen2" not in missing
    assert "sce on qwen2" in missing and "sce on llama" not in missing
    assert "linear on llama" in missing
