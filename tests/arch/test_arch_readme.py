"""README "### Architectures": every mark of the table is backed by the lists the tests run on.

merges "yes": a data file, built by tests/arch/test_arch_data.py and merged by the merge tests;
"with --trust-remote-code": a remote-code family tests/arch/test_remote_code.py infers; "no": no
data file claims the class. mergekit "yes": a family the differential tests compare. GGUF "yes":
a class export accepts and a family the logits checks export; "no": a class export refuses.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from arch_pico import NEW_KINDS, arch_config
from families import FAMILY_KINDS, MERGEKIT_KINDS, REMOTE_FAMILIES, family_config
from moe_pico import MOE_KINDS, moe_config
from pico import KINDS, pico_config

from mergesmith.arch.spec import all_architectures, find_arch
from mergesmith.gguf.convert import SUPPORTED

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gguf"))  # tests/gguf's lists
from gguf_families import GGUF_KINDS  # noqa: E402

README = Path(__file__).resolve().parents[2] / "README.md"
# Compared with mergekit 0.1.5: tests/methods/test_parity.py (MODEL_KINDS: pico.KINDS),
# test_arch_merges.py (all but GPT-NeoX), test_family_merges.py, test_moe_inputs.py.
PARITY_KINDS = KINDS + tuple(k for k in NEW_KINDS if k != "gpt_neox") + MERGEKIT_KINDS + MOE_KINDS


def _config(kind: str) -> dict:
    if kind in KINDS:
        return pico_config(kind).to_dict()
    if kind in NEW_KINDS:
        return arch_config(kind).to_dict()
    if kind in MOE_KINDS:
        return moe_config(kind).to_dict()
    return family_config(kind, 2).to_dict()


def _families(kinds) -> set[str]:
    """The data-file family of each kind's model class (as save_pretrained would name it)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    configs = [_config(kind) for kind in kinds]
    return {find_arch({"architectures": [MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[c["model_type"]]]}).family for c in configs}


@pytest.fixture(scope="module")
def table() -> dict[str, dict[str, str]]:
    text = README.read_text(encoding="utf-8")
    block = text[text.index("<!-- architectures:begin -->") : text.index("<!-- architectures:end -->")]
    rows = {}
    for line in block.splitlines()[3:]:
        family, cls, merges, mergekit, gguf, _notes = (c.strip() for c in line.strip().strip("|").split("|"))
        assert family not in rows, f"{family} listed twice"
        rows[family] = {"class": cls.strip("`"), "merges": merges, "mergekit": mergekit, "gguf": gguf}
    return rows


def test_every_data_file_has_a_row_that_says_it_merges(table):
    for spec in all_architectures():
        assert spec.family in table, f"README's table has no row for {spec.family}"
        assert table[spec.family]["merges"] == "yes", spec.family
        assert table[spec.family]["class"] in spec.architectures, spec.family


def test_merges_marks(table):
    built = _families(KINDS + NEW_KINDS + MOE_KINDS + FAMILY_KINDS)  # what the name and merge tests build
    data = {spec.family for spec in all_architectures()}
    remote = set()
    for name in REMOTE_FAMILIES:
        import mergekit

        path = Path(mergekit.__file__).parent / "_data" / "architectures" / f"{name}.json"
        remote |= set(json.loads(path.read_text())["architectures"])
    claimed = {a for spec in all_architectures() for a in spec.architectures}
    for family, row in table.items():
        if row["merges"] == "yes":
            assert family in data and family in built, family
        elif row["merges"] == "with `--trust-remote-code`":
            assert row["class"] in remote and row["class"] not in claimed, family
        else:
            assert row["merges"] == "no" and row["class"] not in claimed, family


def test_mergekit_marks(table):
    compared = _families(PARITY_KINDS)
    marked = {family for family, row in table.items() if row["mergekit"] == "yes"}
    assert marked == compared
    assert all(row["mergekit"] in ("yes", "no") for row in table.values())


def test_gguf_marks(table):
    exported = _families(KINDS + GGUF_KINDS)  # test_export.py's five, test_family_gguf.py's list
    for family, row in table.items():
        assert row["gguf"] in ("yes", "no"), family
        assert (row["gguf"] == "yes") == (row["class"] in SUPPORTED), family
        assert (row["gguf"] == "yes") == (family in exported), family


def test_table_counts_in_prose_are_current(table):
    """The sentence under the table counts the families compared with mergekit."""
    text = README.read_text(encoding="utf-8")
    compared = len(_families(tuple(k for k in NEW_KINDS if k != "gpt_neox") + MERGEKIT_KINDS))
    assert re.search(rf"Over the {compared}\s+families\s+compared\s+with\s+mergekit", text)
    assert re.search(rf"Architectures: the {len(SUPPORTED)} families marked", text)  # "## GGUF export"
    assert re.search(rf"converts its {len(GGUF_KINDS)} pico models", text)
