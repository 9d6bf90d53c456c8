"""The recipe schema: mergekit's YAML surface as frozen, strict types.

A recipe is parsed once into these objects and never edited afterwards. The shorthand
``models:`` form stays as written here; the planner expands it into slices.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    model_validator,
)

from mergesmith.config.references import canonical_reference

Scalar = Union[bool, int, float, str]
# A value is a scalar, or a gradient: a list of anchors interpolated across a slice's layers.
Value = Union[Scalar, tuple[Scalar, ...]]


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Conditional(Frozen):
    """``{filter: self_attn, value: [0, 0.5, 1]}``; no filter (or ``*``) matches every tensor."""

    value: Value
    filter: str | None = None


# A parameter setting as written: a scalar, a gradient, one conditional, or a list of them.
Setting = Union[Scalar, tuple[Scalar, ...], Conditional, tuple[Conditional, ...]]
Parameters = dict[str, Setting]
# A model as mergekit writes it (`path`, `org/name@rev`, `base+adapter`, or the mapping form),
# stored as its canonical string: see config/references.py.
ModelRef = Annotated[str, BeforeValidator(canonical_reference)]


class SourceSlice(Frozen):
    model: ModelRef
    layer_range: tuple[int, int]
    parameters: Parameters | None = None


class ModelEntry(Frozen):
    model: ModelRef
    parameters: Parameters | None = None


class OutputSlice(Frozen):
    sources: tuple[SourceSlice, ...] = Field(min_length=1)
    base_model: ModelRef | None = None
    # Accepted because published recipes carry it; mergekit ignores it too (see load.py).
    residual_weight: float | None = None
    parameters: Parameters | None = None


class OutputModule(Frozen):
    """One entry of ``modules:`` (a VLM's ``text_decoder``, ``vision_tower``, ...): its own inputs and
    parameters, between a slice's and the recipe's in precedence (plan/modules.py)."""

    slices: tuple[OutputSlice, ...] | None = None
    models: tuple[ModelEntry, ...] | None = None
    parameters: Parameters | None = None

    @model_validator(mode="after")
    def _one_input_form(self) -> OutputModule:
        if bool(self.slices) == bool(self.models):
            raise ValueError("give exactly one of 'slices' or 'models' (with at least one entry)")
        return self


class ZeroEmbedding(Frozen):
    """``{kind: zero}``: the token's row is zeros."""

    kind: Literal["zero"]


class ModelTokenEmbedding(Frozen):
    """``{kind: model_token, model: M, token_id: N}`` (or ``token: text``): that row of model M."""

    kind: Literal["model_token"]
    model: ModelRef
    token_id: int | None = Field(None, ge=0)
    token: str | None = None

    @model_validator(mode="after")
    def _one_token(self) -> ModelTokenEmbedding:
        if (self.token_id is None) == (self.token is None):
            raise ValueError("give exactly one of 'token_id' or 'token'")
        return self


def _embedding_kind(value) -> str:
    # A mapping with 'kind' is an embedding source; anything else is a model reference.
    return str(value.get("kind")) if isinstance(value, dict) and "kind" in value else "model"


EmbeddingSource = Annotated[
    Annotated[ZeroEmbedding, Tag("zero")]
    | Annotated[ModelTokenEmbedding, Tag("model_token")]
    | Annotated[ModelRef, Tag("model")],
    Discriminator(_embedding_kind),
]


class TokenOverride(Frozen):
    """One entry of ``tokenizer.tokens``: ``source`` fills the row for inputs that lack the token
    (no source: the default rule); ``force`` uses it for every input."""

    source: EmbeddingSource | None = None
    force: bool = False


class TokenizerSection(Frozen):
    source: ModelRef = "union"  # mergekit's default when the section is given
    tokens: dict[str, TokenOverride] | None = None
    pad_to_multiple_of: int | None = Field(None, ge=1)


class Recipe(Frozen):
    merge_method: str
    slices: tuple[OutputSlice, ...] | None = None
    models: tuple[ModelEntry, ...] | None = None
    modules: dict[str, OutputModule] | None = None
    base_model: ModelRef | None = None
    parameters: Parameters | None = None
    dtype: str | None = None
    out_dtype: str | None = None
    tokenizer_source: ModelRef | None = None
    tokenizer: TokenizerSection | None = None
    chat_template: str | None = None

    @model_validator(mode="after")
    def _one_input_form(self) -> Recipe:
        if sum(bool(form) for form in (self.slices, self.models, self.modules)) != 1:
            raise ValueError("give exactly one of 'slices' or 'models' (with at least one entry), or 'modules'")
        if self.tokenizer_source is not None and self.tokenizer is not None:
            raise ValueError("give either 'tokenizer_source' or a 'tokenizer' section, not both")
        return self

    def referenced_models(self) -> tuple[str, ...]:
        """Every model the recipe names, in order of first mention, base model first."""
        seen: dict[str, None] = {}
        if self.base_model:
            seen[self.base_model] = None
        for entry in [*(self.models or ()), *(e for m in (self.modules or {}).values() for e in m.models or ())]:
            seen[entry.model] = None
        for out_slice in [*(self.slices or ()), *(s for m in (self.modules or {}).values() for s in m.slices or ())]:
            if out_slice.base_model:
                seen[out_slice.base_model] = None
            for source in out_slice.sources:
                seen[source.model] = None
        return tuple(seen)

    @property
    def tokenizer_choice(self) -> str | None:
        """``base``, ``union`` or a model, from either way of writing it."""
        if self.tokenizer is not None:
            return self.tokenizer.source
        return self.tokenizer_source
