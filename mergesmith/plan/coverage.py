"""Which input tensors reach the output: each is merged, deliberately ignored, or an error.

Two ways a merge used to lose or invent tensors without a word (mergekit 0.1.5 does both):
a tensor the architecture definition does not list (llama's ``attention_bias`` biases) was
dropped, and transformers then re-initialised it when loading the output (biases as zeros);
and a head tied to the embeddings was written whenever some input had its own, although the
output's config ties it and transformers ignores the tensor (a Gemma2 merge grew from 9.2B
to 10.2B parameters on disk). The rule for both: the output holds a tensor exactly when its
config.json (the config donor's) makes transformers create it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from mergesmith.arch.spec import ArchSpec, WeightSpec, all_architectures
from mergesmith.errors import ArchitectureError
from mergesmith.io.header import ModelHeader

_SHOWN = 3  # tensor names quoted in a message before "..."


def _label(model: ModelHeader) -> str:
    return f"'{model.key}'" if str(model.path) == model.key else f"'{model.key}' ({model.path})"


def check_coverage(arch: ArchSpec, models: Mapping[str, ModelHeader], source: str) -> None:
    """ArchitectureError for the first input holding tensors ``arch`` neither merges nor ignores."""
    for model in models.values():
        count = arch.num_layers(dict(model.config), f"model {_label(model)}")
        extra = arch.unlisted(model.tensors, count)
        if not extra:
            continue
        shown = ", ".join(extra[:_SHOWN]) + (", ..." if len(extra) > _SHOWN else "")
        if arch in all_architectures() or arch.num_experts is not None:  # expanded from a data file
            fix = (
                f'add them to mergesmith/arch/data/{arch.family}.json ("optional": true, with the '
                '"config_flag" that creates them; non-weight buffers under "ignored_buffers") '
                "or re-save the model without them"
            )
        else:
            fix = (
                "the definition was inferred from another input's tensor names; merge checkpoints with the same "
                "tensors, or add a definition (README: Architectures)"
            )
        raise ArchitectureError(
            f"{source}: model {_label(model)} has {len(extra)} tensor{'s' * (len(extra) > 1)} the {arch.family} "
            "definition does not list "
            f"({shown}); the merge would drop them and transformers would re-initialise them on loading; {fix}"
        )


def output_ties(arch: ArchSpec, donor: ModelHeader) -> tuple[bool, str]:
    """Whether the output's config.json (the donor's) ties the head to the embeddings, and why."""
    where = f"config.json of '{donor.key}'"
    value = donor.config.get("tie_word_embeddings")
    if isinstance(value, bool):
        return value, f"{where} sets tie_word_embeddings {str(value).lower()}"
    if arch.tie_word_embeddings is not None:
        return arch.tie_word_embeddings, f"{where} omits tie_word_embeddings, {arch.family} ties by default"
    # An inferred definition knows no default: the donor's own files show how it is used.
    own_head = any(w.tied_to and w.name in donor.tensors for w in arch.post)
    return not own_head, f"{where} omits tie_word_embeddings and its checkpoint has no separate head"


def post_weights(
    arch: ArchSpec, sources: Sequence[ModelHeader], donor: ModelHeader
) -> tuple[list[WeightSpec], list[str]]:
    """``arch.post`` as the output has it, with notes, for the last slice's ``sources``.

    A head tied to the embeddings (one with ``tied_to``) is written exactly when the output
    config unties it. Tied: no head, whatever the inputs have. Untied: a head even when no
    source has its own, merged from their embeddings as for any tied input.
    """
    ties, why = output_ties(arch, donor)
    weights, notes = [], []
    for weight in arch.post:
        if not weight.tied_to:
            weights.append(weight)
            continue
        own = [m.key for m in sources if weight.name in m.tensors]
        if not ties:
            weights.append(replace(weight, optional=False))
            if not own:
                notes.append(
                    f"the output unties {weight.name} ({why}) but no model of the last slice has one; "
                    f"it is merged from their {weight.tied_to[0]}"
                )
        elif own:
            notes.append(
                f"the output ties {weight.name} to {weight.tied_to[0]} ({why}), so the separate "
                f"{weight.name} of {', '.join(repr(k) for k in own)} is not merged and the output has "
                "none (transformers would ignore it); set tie_word_embeddings: false in that config.json "
                "to keep it"
            )
    return weights, notes


def layer_weights(
    arch: ArchSpec, models: Mapping[str, ModelHeader], donor: ModelHeader
) -> tuple[tuple[WeightSpec, ...], list[str]]:
    """``arch.layer`` as the output has it, with notes: a tensor whose ``config_flag`` the output
    config (the donor's) leaves off is not written, as transformers would ignore it."""
    kept, off = [], {}
    for weight in arch.layer:
        if weight.config_flag is None or donor.config.get(weight.config_flag):
            kept.append(weight)
        else:
            off.setdefault(weight.config_flag, []).append(weight)
    notes = []
    for flag, weights in off.items():
        own = [m.key for m in models.values() if any(w.at_layer(0).name in m.tensors for w in weights)]
        if own:
            notes.append(
                f"config.json of '{donor.key}' leaves {flag} off, so the {flag} tensors of "
                f"{', '.join(repr(k) for k in own)} are not merged (transformers would ignore them); "
                "make a model that has them the config donor (base_model, else the first model) to keep them"
            )
    return tuple(kept), notes
