"""The README's method table is the one the registry generates."""

from pathlib import Path

from mergesmith.methods.docs import BEGIN, END, method_table


def test_readme_method_table_is_current():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index(BEGIN) : readme.index(END) + len(END)]
    assert section == method_table(), "regenerate with: python -m mergesmith.methods.docs"
