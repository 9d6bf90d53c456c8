"""Session fixtures: pico model families built once per test run (about a second in all).

Families are lists ``[base, ft1, ft2]`` of model directories (see tests/pico.py).
Tests marked ``mergekit`` are skipped with a reason when mergekit 0.1.5 is not installed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

# tests/ is not a package, so pytest (default "prepend" import mode) puts this directory on
# sys.path: test modules anywhere under tests/ import the helpers as `pico` and `reference`.
from parity_summary import attribute, missing_coverage, per_method_lines
from pico import make_family, make_pico
from reference import require_mergekit


def pytest_runtest_setup(item):
    if item.get_closest_marker("mergekit") is not None:
        require_mergekit()


@pytest.fixture
def mergekit_available() -> Path:
    """The mergekit-yaml script; skips the test when mergekit 0.1.5 is unusable."""
    return require_mergekit()


@pytest.fixture(scope="session")
def llama_family(tmp_path_factory) -> list[Path]:
    return make_family("llama", tmp_path_factory.mktemp("llama"), seed=0)


@pytest.fixture(scope="session")
def mistral_family(tmp_path_factory) -> list[Path]:
    """Every member in 3 shards plus model.safetensors.index.json."""
    return make_family("mistral", tmp_path_factory.mktemp("mistral"), seed=1, shards=3)


@pytest.fixture(scope="session")
def qwen2_family(tmp_path_factory) -> list[Path]:
    """Tied embeddings: no lm_head.weight in the files."""
    return make_family("qwen2", tmp_path_factory.mktemp("qwen2"), seed=2)


@pytest.fixture(scope="session")
def phi2_family(tmp_path_factory) -> list[Path]:
    return make_family("phi2", tmp_path_factory.mktemp("phi2"), seed=3)


@pytest.fixture(scope="session")
def gemma3_family(tmp_path_factory) -> list[Path]:
    """Gemma3ForCausalLM (gemma3_text), alternating sliding/full layer_types, tied."""
    return make_family("gemma3", tmp_path_factory.mktemp("gemma3"), seed=4)


@pytest.fixture(scope="session")
def llama48(tmp_path_factory) -> Path:
    """One 48-layer llama, for layer slicing and gradients over many layers."""
    return make_pico("llama", tmp_path_factory.mktemp("llama48") / "model", seed=48, num_layers=48)


@pytest.fixture(scope="session")
def families(llama_family, mistral_family, qwen2_family, phi2_family, gemma3_family) -> dict[str, list[Path]]:
    """Every family by kind, for tests parametrized over pico.KINDS."""
    return {
        "llama": llama_family,
        "mistral": mistral_family,
        "qwen2": qwen2_family,
        "phi2": phi2_family,
        "gemma3": gemma3_family,
    }


_PARITY: list = []


@pytest.fixture
def parity_log() -> list:
    """Differential tests append (label, Parity); the totals print at the end of the run."""
    return _PARITY


def pytest_terminal_summary(terminalreporter):
    if not _PARITY:
        return
    # Merges under the default TIES tie rule differ from mergekit at threshold ties by design
    # (their tests assert that nothing else differs); they are listed but not totalled.
    exactness = [(label, p) for label, p in _PARITY if "tie rule" not in label]
    exact = sum(p.exact for _, p in exactness)
    ulp = sum(p.within_ulp for _, p in exactness)
    differing = sum(len(p.differing) for _, p in exactness)
    terminalreporter.write_sep("=", "parity with mergekit 0.1.5")
    for label, p in _PARITY:
        terminalreporter.write_line(f"{label}: {p.summary()}")
    terminalreporter.write_sep("-", "per method: whole merges, then function-level (fn) comparisons")
    for line in per_method_lines(_PARITY):
        terminalreporter.write_line(line)
    uncovered = missing_coverage(_PARITY)
    if uncovered:
        shown = ", ".join(uncovered[:8]) + (", ..." if len(uncovered) > 8 else "")
        terminalreporter.write_line(f"{len(uncovered)} method/family pairs without a whole merge in this run: {shown}")
    functions = sum(1 for label, _ in exactness if attribute(label).function_level)
    terminalreporter.write_line(
        f"TOTAL over {len(exactness) - functions} merges and {functions} function-level cases: {exact} tensors "
        f"bit-exact, {ulp} within 1 ulp, {differing} differing (plus {len(_PARITY) - len(exactness)} merges under "
        "the default tie rule, different only at threshold ties)"
    )
