"""A method's resolved parameters for one output tensor: one frozen type per method, generated
from its ``Param`` declarations (methods/spec.py), so the declaration stays the only place a
parameter is named.

The type has one field per shared parameter and ``per_input``, a tuple with one record per
input in recipe order. A record holds the per-input parameters; the base's record lacks the
non-base ones (``weight``, ``density``, …), so reading them for the base is an error, not a
silent default. Fields are the recipe's names, ``lambda`` (a Python keyword) as ``lambda_``;
``params["lambda"]`` and ``as_dict()`` use the recipe's names, for plans, cards and tests.
"""

from __future__ import annotations

import dataclasses
import keyword
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, ClassVar


def attribute(name: str) -> str:
    """The field a recipe parameter is stored in: its name, ``lambda_`` for ``lambda``."""
    return name + "_" if keyword.iskeyword(name) else name


class Values:
    """Lookup by recipe name and ``as_dict``, shared by a params type and its per-input records."""

    NAMES: ClassVar[tuple[str, ...]] = ()  # recipe names of this type's parameter fields, in order

    def __getitem__(self, name: str) -> Any:
        if name not in self.NAMES:
            raise KeyError(name)
        return getattr(self, attribute(name))

    def __contains__(self, name: str) -> bool:
        return name in self.NAMES

    def values(self) -> Mapping[str, Any]:
        return MappingProxyType({name: getattr(self, attribute(name)) for name in self.NAMES})


class Params(Values):
    """Base of the generated types: shared fields, then ``per_input``."""

    Input: ClassVar[type[Values]]  # the record of an input other than the base
    BaseInput: ClassVar[type[Values]]  # the base's record (no non-base parameters)
    per_input: tuple[Values, ...]

    @classmethod
    def build(cls, shared: Mapping[str, Any], per_input: Sequence[Mapping[str, Any]], base_index: int | None) -> Params:
        """From values by recipe name (as the planner resolves them); the base's record takes
        only the per-input parameters that every input has."""
        records = tuple(
            _record(cls.BaseInput if i == base_index else cls.Input, values) for i, values in enumerate(per_input)
        )
        return cls(**{attribute(k): v for k, v in shared.items()}, per_input=records)

    def as_dict(self) -> dict[str, Any]:
        """``{"shared": {name: value}, "per_input": [{name: value}, ...]}``, by recipe name."""
        return {"shared": dict(self.values()), "per_input": [dict(r.values()) for r in self.per_input]}


def _record(kind: type[Values], values: Mapping[str, Any]) -> Values:
    return kind(**{attribute(k): v for k, v in values.items()})


def _frozen(name: str, names: Sequence[str], base: type, extra: Sequence[tuple] = (), **namespace) -> type:
    fields = [(attribute(n), Any) for n in names] + list(extra)
    return dataclasses.make_dataclass(
        name, fields, bases=(base,), frozen=True, namespace={"NAMES": tuple(names), "__module__": __name__, **namespace}
    )


def params_type(
    method: str, shared: Sequence[str], every_input: Sequence[str], non_base: Sequence[str]
) -> type[Params]:
    """The frozen params type of ``method``: ``shared`` fields, and per-input records with the
    ``every_input`` parameters (the base's) plus ``non_base`` (the others')."""
    stem = "".join(part.title() for part in method.split("_"))
    base_input = _frozen(f"{stem}BaseInput", every_input, Values)
    input_ = _frozen(f"{stem}Input", [*every_input, *non_base], Values) if non_base else base_input
    return _frozen(f"{stem}Params", shared, Params, [("per_input", tuple)], Input=input_, BaseInput=base_input)
