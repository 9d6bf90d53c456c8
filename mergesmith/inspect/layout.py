"""Which layer and which kind of module each tensor belongs to, for grouping statistics.

The layer and role come from the architecture data the planner uses (arch/data/*.json, or the
definition inferred from tensor names, arch/infer.py); a tensor neither names is placed by its
name: the first all-digit part is the layer (``model.layers.7.mlp...``), and substrings give the
module. Roles map to module types as: ``*norm*`` -> norm, ``attn_*`` -> attention, ``mlp_*`` ->
MLP, ``embed*`` -> embedding, ``lm_head*`` -> head.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from mergesmith.arch.infer import infer_arch
from mergesmith.arch.spec import ArchSpec, find_arch
from mergesmith.errors import ArchitectureError

MODULES = ("attention", "mlp", "norm", "embedding", "head", "other")

# Name parts that mark a module when no role says it: (module, whole parts, substrings of a part),
# checked in this order (a layer norm inside an attention block is a norm; GPT-NeoX's
# ``embed_out`` is a head, not an embedding; ``output`` only as a whole part, not ``attention.output``).
_NAME_HINTS = (
    ("norm", ("ln",), ("norm", "ln_")),
    ("head", ("lm_head", "embed_out", "output", "head"), ()),
    ("embedding", (), ("embed", "wte", "wpe")),
    ("attention", (), ("attn", "attention")),
    ("mlp", (), ("mlp", "ffn", "feed_forward")),
)


@dataclass(frozen=True)
class Place:
    layer: int | None
    module: str


def module_of_role(role: str) -> str | None:
    """The module type of an architecture role; None for roles that say nothing (inferred "layer")."""
    if "norm" in role:
        return "norm"
    for prefix, module in (("attn", "attention"), ("mlp", "mlp"), ("embed", "embedding"), ("lm_head", "head")):
        if role.startswith(prefix):
            return module
    return None


def module_of_name(name: str) -> str:
    parts = name.lower().split(".")[:-1] or [name.lower()]
    for module, whole, inside in _NAME_HINTS:
        if any(part in whole or any(hint in part for hint in inside) for part in parts):
            return module
    return "other"


def layer_of_name(name: str) -> int | None:
    """``model.layers.7.mlp.up_proj.weight`` -> 7: the first all-digit part between dots."""
    parts = name.split(".")
    return next((int(p) for p in parts[1:-1] if p.isdigit()), None)


def _spec(config: Mapping, shapes: Mapping[str, tuple[int, ...]], source: str) -> ArchSpec | None:
    spec = find_arch(config)
    if spec is not None:
        return spec
    try:
        return infer_arch(config, shapes, source)
    except ArchitectureError:  # inspection still works by name; only merges need a definition
        return None


def _roles(spec: ArchSpec, config: Mapping, source: str) -> dict[str, tuple[int | None, str]]:
    try:
        count = spec.num_layers(config, source)
    except ArchitectureError:
        return {}
    roles = {w.name: (None, w.role) for w in spec.pre + spec.post}
    roles.update({w.name: (i, w.role) for i in range(count) for w in spec.layer_weights(i)})
    return roles


def places(
    names: Iterable[str], config: Mapping, shapes: Mapping[str, tuple[int, ...]], source: str
) -> dict[str, Place]:
    """Layer and module type of each tensor name of one model (``config``, header ``shapes``)."""
    spec = _spec(config, shapes, source)
    roles = _roles(spec, config, source) if spec is not None else {}
    out = {}
    for name in names:
        layer, role = roles.get(name, (layer_of_name(name), ""))
        out[name] = Place(layer, module_of_role(role) or module_of_name(name))
    return out
