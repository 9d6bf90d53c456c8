"""The README's method table and parameter glossary are the ones the registry generates."""

from pathlib import Path

from mergesmith.methods.docs import BEGIN, END, PARAMS_BEGIN, PARAMS_END, method_table, parameter_glossary


def test_readme_method_table_is_current():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index(BEGIN) : readme.index(END) + len(END)]
    assert section == method_table(), "regenerate with: python -m mergesmith.methods.docs"


def test_readme_parameter_glossary_is_current_and_every_parameter_is_explained():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index(PARAMS_BEGIN) : readme.index(PARAMS_END) + len(PARAMS_END)]
    assert section == parameter_glossary(), "regenerate with: python -m mergesmith.methods.docs"
    assert "| `alpha` | `regmean` | shrinks each Gram's off-diagonal toward its diagonal |" in section
    assert all(row.count("|") == 4 and not row.endswith("|  |") for row in section.splitlines()[3:-1])
