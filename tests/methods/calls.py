"""Call a merge method on tensors in memory, the way a merge runs it (execute/method.py)."""

from __future__ import annotations

import torch

from mergesmith.execute.method import merge_tensors
from mergesmith.methods.params import Params
from mergesmith.methods.registry import METHODS
from mergesmith.methods.spec import Scope


def params_for(
    method: str, n: int, base_index: int | None = None, shared: dict | None = None, per: dict | None = None
) -> Params:
    """The method's defaults, overridden by ``shared`` and ``per[name][input index]``."""
    spec, shared, per = METHODS[method], shared or {}, per or {}
    values = {p.name: shared.get(p.name, p.default) for p in spec.params if p.scope == Scope.SHARED}
    per_input = [
        {
            p.name: per.get(p.name, {}).get(i, p.default)
            for p in spec.params
            if p.scope == Scope.INPUT or (p.scope == Scope.NON_BASE and i != base_index)
        }
        for i in range(n)
    ]
    return spec.params_type.build(values, per_input, base_index)


def call(
    method: str,
    tensors,
    base_index: int | None = None,
    shared: dict | None = None,
    per: dict | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    params = params_for(method, len(tensors), base_index, shared, per)
    return merge_tensors(METHODS[method], list(tensors), base_index, params, generator)


# A two-model recipe over a base, for the methods' CLI tests (float32 output).
RECIPE = """\
merge_method: {method}
base_model: {base}
models:
  - model: {a}
  - model: {b}
parameters: {{{params}}}
dtype: float32
"""
