"""All merge methods by name. CLI help, docs tables and the planner read this one mapping."""

from __future__ import annotations

import difflib
from types import MappingProxyType

from mergesmith.errors import ConfigError
from mergesmith.methods import (
    arcee_fusion,
    iso,
    linear,
    model_stock,
    nearswap,
    passthrough,
    ram,
    regmean,
    sce,
    slerp,
    spherical,
    task_arithmetic,
    tsv,
)
from mergesmith.methods.spec import MethodSpec

METHODS = MappingProxyType(
    {
        spec.name: spec
        for spec in (
            linear.SPEC,
            slerp.SPEC,
            passthrough.SPEC,
            *task_arithmetic.SPECS,
            model_stock.SPEC,
            *spherical.SPECS,
            sce.SPEC,
            nearswap.SPEC,
            arcee_fusion.SPEC,
            *ram.SPECS,
            regmean.SPEC,
            tsv.SPEC,
            *iso.SPECS,
        )
    }
)


def get_method(name: str, where: str = "merge_method") -> MethodSpec:
    try:
        return METHODS[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(METHODS), n=1, cutoff=0.5)
        hint = f"did you mean '{close[0]}'?" if close else f"known methods: {', '.join(sorted(METHODS))}"
        raise ConfigError(f"{where}: unknown merge method '{name}'; {hint}") from None
