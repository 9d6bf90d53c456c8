"""The recipe schema: mergekit's YAML surface as frozen, strict types.

A recipe is parsed once into these objects and never edited afterwards. The shorthand
``models:`` form stays as written here; the planner expands it into slices.
"""

from __future__ import annotations

from typing import Optional, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

Scalar = Union[bool, int, float, str]
# A value is a scalar, or a gradient: a list of anchors interpolated across a slice's layers.
Value = Union[Scalar, tuple[Scalar, ...]]


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Conditional(Frozen):
    """``{filter: self_attn, value: [0, 0.5, 1]}``; no filter (or ``*``) matches every tensor."""

    value: Value
    filter: Optional[str] = None


# A parameter setting as written: a scalar, a gradient, one conditional, or a list of them.
Setting = Union[Scalar, tuple[Scalar, ...], Conditional, tuple[Conditional, ...]]
Parameters = dict[str, Setting]


class SourceSlice(Frozen):
    model: str
    layer_range: tuple[int, int]
    parameters: Optional[Parameters] = None


class ModelEntry(Frozen):
    model: str
    parameters: Optional[Parameters] = None


class OutputSlice(Frozen):
    sources: tuple[SourceSlice, ...] = Field(min_length=1)
    base_model: Optional[str] = None
    # Accepted because published recipes carry it; mergekit ignores it too (see load.py).
    residual_weight: Optional[float] = None
    parameters: Optional[Parameters] = None


class TokenizerSection(Frozen):
    source: str = "base"
    tokens: Optional[dict[str, dict]] = None
    pad_to_multiple_of: Optional[int] = None


class Recipe(Frozen):
    merge_method: str
    slices: Optional[tuple[OutputSlice, ...]] = None
    models: Optional[tuple[ModelEntry, ...]] = None
    base_model: Optional[str] = None
    parameters: Optional[Parameters] = None
    dtype: Optional[str] = None
    out_dtype: Optional[str] = None
    tokenizer_source: Optional[str] = None
    tokenizer: Optional[TokenizerSection] = None
    chat_template: Optional[str] = None

    @model_validator(mode="after")
    def _one_input_form(self) -> "Recipe":
        if bool(self.slices) == bool(self.models):
            raise ValueError("give exactly one of 'slices' or 'models' (with at least one entry)")
        if self.tokenizer_source is not None and self.tokenizer is not None:
            raise ValueError("give either 'tokenizer_source' or a 'tokenizer' section, not both")
        return self

    def referenced_models(self) -> tuple[str, ...]:
        """Every model the recipe names, in order of first mention, base model first."""
        seen: dict[str, None] = {}
        if self.base_model:
            seen[self.base_model] = None
        for entry in self.models or ():
            seen[entry.model] = None
        for out_slice in self.slices or ():
            if out_slice.base_model:
                seen[out_slice.base_model] = None
            for source in out_slice.sources:
                seen[source.model] = None
        return tuple(seen)

    @property
    def tokenizer_choice(self) -> Optional[str]:
        """``base``, ``union`` or a model, from either way of writing it."""
        if self.tokenizer is not None:
            return self.tokenizer.source
        return self.tokenizer_source
