"""Differential tests in batches: the mergekit side of a module's selected cases in one process.

A module names each case (``{case id: recipe}``) and parametrizes its tests by case id under the
argument ``case``; its ``reference`` fixture calls :func:`mergekit_reference`, which runs exactly
the cases the session selected (``pytest -k`` on one case runs one mergekit merge) through
tests/arch/mergekit_batch.py, so the module pays mergekit's start-up (torch, transformers and
mergekit imports: 5 to 20 s on a 2-core CI machine) once instead of once per case.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from reference import load_dir

# mergekit_batch.py lives beside the architecture tests, which put tests/arch on sys.path only
# when they are collected; a module run on its own needs it here.
_ARCH_TESTS = str(Path(__file__).resolve().parent / "arch")
if _ARCH_TESTS not in sys.path:
    sys.path.append(_ARCH_TESTS)

from mergekit_batch import run_mergekit_many  # noqa: E402  (found through the path added above)


def selected_cases(request: pytest.FixtureRequest, argname: str = "case") -> list[str]:
    """The ``argname`` values of the requesting module's tests that this session runs, in order."""
    found = []
    for item in request.session.items:
        spec = getattr(item, "callspec", None)
        if getattr(item, "module", None) is request.module and spec is not None and argname in spec.params:
            found.append(spec.params[argname])
    return list(dict.fromkeys(found))


@dataclass(frozen=True)
class MergekitReference:
    outputs: Mapping[str, Path]  # case id -> mergekit's output directory
    failures: Mapping[str, str]  # case id -> mergekit's error, for the cases it refused

    def load(self, case: str) -> dict[str, torch.Tensor]:
        """mergekit's tensors for ``case``; fails the calling test when mergekit refused it."""
        if case in self.failures:
            pytest.fail(f"mergekit 0.1.5 refused case {case}:\n{self.failures[case]}")
        return load_dir(self.outputs[case])


def mergekit_reference(recipes: Mapping[str, str], cases: list[str], root: Path) -> MergekitReference:
    """Run mergekit-yaml on ``recipes[case]`` for each of ``cases`` into ``root/<case>``, in one process."""
    outputs = {case: root / case for case in cases}
    failures = run_mergekit_many([(recipes[case], out) for case, out in outputs.items()]) if cases else {}
    by_case = {case: failures[out] for case, out in outputs.items() if out in failures}
    return MergekitReference(outputs, by_case)
