"""Which modules of a fine-tune become LoRA factors, which are saved whole, which are left out.

A module is a tensor name's prefix (``model.layers.0.self_attn.q_proj`` for its ``.weight`` and
``.bias``), as PEFT names modules. The route of a module depends on what changed in it:

    nothing changed                                   unchanged: not written
    listed in save_modules                            saved whole (modules_to_save)
    not matched by include_regex / matched by exclude excluded: not written (and reported)
    a changed tensor neither 1-D nor 2-D              undecomposable: an error, or skipped
    embedding or output head, embed_lora off          saved whole
    a changed 2-D weight, at most its bias besides    LoRA (the bias carried beside it)
    anything else (norms, a bias alone, ...)          saved whole: 1-D changes are never dropped

Embeddings are told by their role in the architecture definition (mergesmith/arch), not by name.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from mergesmith.arch.infer import ArchInput, arch_for_models

EMBEDDING_ROLES = ("embed", "embed_pos")  # nn.Embedding: PEFT's lora_embedding_A/B, transposed
HEAD_ROLES = ("lm_head",)  # a Linear, but kept whole unless embed_lora, as mergekit does
# Routes, as the report and the model card name them.
LORA, SAVED, UNCHANGED, EXCLUDED, SKIPPED, DROPPED = (
    "lora",
    "saved whole",
    "unchanged",
    "excluded",
    "skipped (undecomposable)",
    "dropped (below sv_epsilon)",
)


@dataclass(frozen=True)
class Module:
    name: str
    tensors: tuple[str, ...]  # full tensor names, in file order
    role: str | None  # the role of its weight in the architecture definition

    @property
    def weight(self) -> str:
        return f"{self.name}.weight"

    @property
    def bias(self) -> str:
        return f"{self.name}.bias"

    @property
    def is_embedding(self) -> bool:
        return self.role in EMBEDDING_ROLES


@dataclass(frozen=True)
class Selection:
    """The user's choice of modules: saved whole by name, included/excluded by regex (re.search)."""

    save_modules: tuple[str, ...] = ()
    include: re.Pattern | None = None
    exclude: re.Pattern | None = None
    embed_lora: bool = False

    def saves(self, module: str) -> bool:
        # PEFT's rule for modules_to_save: the name, or its dotted tail.
        return any(module == m or module.endswith("." + m) for m in self.save_modules)

    def includes(self, module: str) -> bool:
        if self.include is not None and not self.include.search(module):
            return False
        return self.exclude is None or not self.exclude.search(module)


@dataclass(frozen=True)
class ArchFacts:
    roles: Mapping[str, str]  # tensor name -> role
    tied_heads: Mapping[str, str]  # embedding tensor -> the head tied to it, absent from the files


def arch_facts(config: Mapping, shapes: Mapping[str, Sequence[int]], source: str) -> ArchFacts:
    """Roles from the shipped definition (or one inferred from the names), and the heads that
    this model ties to its embeddings (listed with ``tied_to`` but not in its files)."""
    spec = arch_for_models({source: ArchInput(config, shapes, source)})[source]
    count = spec.num_layers(config, source)
    weights = [*spec.pre, *(w for i in range(count) for w in spec.layer_weights(i)), *spec.post]
    tied = {
        w.tied_to[0]: w.name
        for w in weights
        if w.role in HEAD_ROLES and w.tied_to and w.name not in shapes and w.tied_to[0] in shapes
    }
    return ArchFacts({w.name: w.role for w in weights}, tied)


def group(names: Iterable[str], roles: Mapping[str, str]) -> list[Module]:
    """Tensors grouped by module, modules in the order their first tensor appears."""
    members: dict[str, list[str]] = {}
    for name in names:
        members.setdefault(name.rpartition(".")[0] or name, []).append(name)
    return [Module(module, tuple(tensors), roles.get(f"{module}.weight")) for module, tensors in members.items()]


def route(module: Module, changed: Sequence[str], ndims: Mapping[str, int], selection: Selection) -> str:
    """Where ``module`` goes, given the names of its tensors that differ from the base."""
    if selection.saves(module.name):
        return SAVED
    if not selection.includes(module.name):
        return EXCLUDED
    if not changed:
        return UNCHANGED
    if any(ndims[name] not in (1, 2) for name in changed):
        return SKIPPED
    if (module.is_embedding or module.role in HEAD_ROLES) and not selection.embed_lora:
        return SAVED
    lora_weight = module.weight in changed and ndims[module.weight] == 2
    if lora_weight and set(changed) <= {module.weight, module.bias}:
        return LORA
    return SAVED
