"""A definition read off an input's tensor names, for an architecture with no data file.

The rule: names ``<prefix>.<N>.<rest>`` (the first all-digit part is the layer index) form the
layer stack; every layer must hold the same ``rest`` templates, indices 0..N-1. The other
tensors are global: embedding-like names (``embed``, ``wte``, ``wpe``, ...) go before the layers,
everything else (final norm, head) after. A global with an axis of ``vocab_size`` gets that axis
as its vocabulary axis; a head of the embeddings' shape is optional and tied to them, as in the
shipped files, so a tied model contributes its embeddings. The layer count comes from the config
key among LAYER_COUNT_KEYS whose value equals N.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mergesmith.arch.moe import check_expert_counts, with_experts
from mergesmith.arch.spec import (
    ArchSpec,
    WeightSpec,
    find_arch,
    supported_architectures,
)
from mergesmith.errors import ArchitectureError

LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
# A name part equal to one of these marks an output head. Checked before the embedding hints,
# because GPT-NeoX's head is called ``embed_out``.
_HEAD_PARTS = ("lm_head", "embed_out", "output", "head")
_EMBED_HINTS = ("embed", "wte", "wpe", "word_embeddings", "position_embeddings")
_NORM_HINTS = ("norm", "ln_f")
_SHOWN = 4  # names quoted in a message before "..."


def _listing(names) -> str:
    names = sorted(names)
    return ", ".join(names[:_SHOWN]) + (f", ... ({len(names)} in all)" if len(names) > _SHOWN else "")


def _split(name: str) -> tuple[str, int, str] | None:
    """``model.layers.3.mlp.up.weight`` -> ``("model.layers", 3, "mlp.up.weight")``."""
    parts = name.split(".")
    for i, part in enumerate(parts[1:-1], start=1):
        if part.isdigit():
            return ".".join(parts[:i]), int(part), ".".join(parts[i + 1 :])
    return None


def _layer_stack(names: Sequence[str], where: str) -> tuple[str, int, tuple[str, ...]]:
    """(prefix, layer count, per-layer templates) of the one layer stack in ``names``."""
    stacks: dict[str, dict[int, set[str]]] = defaultdict(lambda: defaultdict(set))
    for name in names:
        split = _split(name)
        if split is not None:
            stacks[split[0]][split[1]].add(split[2])
    if not stacks:
        raise ArchitectureError(
            f"{where}: no tensor name has a layer index (<prefix>.<N>.<rest>); "
            f"found {len(names)} tensors: {_listing(names)}"
        )
    if len(stacks) > 1:
        found = "; ".join(f"'{p}.N' ({len(layers)} layers)" for p, layers in sorted(stacks.items()))
        raise ArchitectureError(f"{where}: more than one layer stack: {found}; inference handles one")
    prefix, layers = next(iter(stacks.items()))
    n = max(layers) + 1
    gaps = [i for i in range(n) if i not in layers]
    if gaps:
        raise ArchitectureError(f"{where}: '{prefix}.N' has layers up to {n - 1} but none numbered {gaps[:_SHOWN]}")
    first = layers[0]
    for i in range(1, n):
        if layers[i] != first:
            odd = (layers[i] - first) or (first - layers[i])
            side = "has" if layers[i] - first else "lacks"
            raise ArchitectureError(
                f"{where}: layers differ: '{prefix}.{i}' {side} "
                f"{_listing(f'{prefix}.{i}.{rest}' for rest in odd)} compared with '{prefix}.0'"
            )
    return prefix, n, tuple(sorted(first))


def _layer_count_key(config: Mapping, n: int, prefix: str, where: str) -> str:
    for key in LAYER_COUNT_KEYS:
        if config.get(key) == n and not isinstance(config.get(key), bool):
            return key
    present = ", ".join(f"{k}={config[k]!r}" for k in LAYER_COUNT_KEYS if k in config) or "none of them"
    raise ArchitectureError(
        f"{where}: the tensors hold {n} layers under '{prefix}.N' but config.json has no layer count equal to "
        f"{n} (looked for {', '.join(LAYER_COUNT_KEYS)}: {present})"
    )


def _is_head(name: str) -> bool:
    return any(part in _HEAD_PARTS for part in name.split(".")[:-1])


def _is_embedding(name: str) -> bool:
    return not _is_head(name) and any(h in part for part in name.split(".")[:-1] for h in _EMBED_HINTS)


def _vocab_axis(shape: Sequence[int], vocab) -> int | None:
    if not isinstance(vocab, int) or isinstance(vocab, bool):
        return None
    return next((axis for axis, size in enumerate(shape) if size == vocab), None)


def _globals(shapes: Mapping[str, Sequence[int]], names: list[str], config: Mapping, where: str):
    vocab = config.get("vocab_size")
    pre, post = [], []
    for name in sorted(names):
        axis = _vocab_axis(shapes[name], vocab)
        bias = "_bias" if name.endswith(".bias") else ""
        if _is_embedding(name):
            pre.append(WeightSpec(name, "embed" if axis is not None else "embed_extra", vocab_axis=axis))
        elif axis is not None:
            post.append(WeightSpec(name, "lm_head" + bias, vocab_axis=axis))
        else:
            post.append(WeightSpec(name, ("final_norm" if any(h in name for h in _NORM_HINTS) else "post") + bias))
    embed = next((w.name for w in pre if w.role == "embed"), None)
    if embed is not None:
        # An untied head of the embeddings' shape may be absent from a tied input: read the
        # embeddings there, and write no head when no input has one.
        post = [
            WeightSpec(w.name, w.role, w.vocab_axis, optional=True, tied_to=(embed,))
            if w.role == "lm_head" and tuple(shapes[w.name]) == tuple(shapes[embed])
            else w
            for w in post
        ]
    if config.get("tie_word_embeddings") is False and not any(w.role == "lm_head" for w in post):
        raise ArchitectureError(
            f"{where}: config.json sets tie_word_embeddings false but no tensor after the layers has the vocabulary "
            f"size ({vocab!r}); globals found: {_listing(names)}"
        )
    return tuple(pre), tuple(post)


def _indices(values: list) -> bool:
    """A list of layer indices (Llama 4's ``moe_layers`` = [0, 1, 2, 3]), not one entry per layer:
    strictly increasing integers from 0 (per-layer flags such as ``no_rope_layers`` repeat values)."""
    return all(isinstance(v, int) and not isinstance(v, bool) and v == i for i, v in enumerate(values))


def _name(config: Mapping) -> str:
    names = config.get("architectures") or []
    return str(names[0]) if names else str(config.get("model_type") or "unknown")


def infer_arch(config: Mapping, shapes: Mapping[str, Sequence[int]], source: str) -> ArchSpec:
    """The definition an input's tensor names imply; ArchitectureError when they imply none."""
    where = (
        f"{source}: architecture {_name(config)!r} has no definition "
        f"(supported: {', '.join(supported_architectures())}) and cannot be inferred"
    )
    names = list(shapes)
    prefix, n, templates = _layer_stack(names, where)
    key = _layer_count_key(config, n, prefix, where)
    in_layers = {f"{prefix}.{i}.{rest}" for i in range(n) for rest in templates}
    pre, post = _globals(shapes, [x for x in names if x not in in_layers], config, where)
    per_layer = tuple(
        k for k, v in config.items() if "layer" in k and isinstance(v, list) and len(v) == n and not _indices(v)
    )
    return ArchSpec(
        family=str(config.get("model_type") or _name(config)),
        model_type=str(config.get("model_type") or ""),
        architectures=tuple(config.get("architectures") or ()),
        num_layers_key=key,
        per_layer_keys=per_layer,
        pre=pre,
        layer=tuple(WeightSpec(f"{prefix}.{{layer}}.{rest}", "layer") for rest in templates),
        post=post,
    )


def inferred_warning(config: Mapping, spec: ArchSpec) -> str:
    """One line describing what was inferred; the same for every input of that architecture."""
    prefix = spec.layer[0].name.split(".{layer}.")[0]
    head = next((w for w in spec.post if w.role == "lm_head"), None)
    tie = "none (tied to the embeddings)" if head is None else head.name
    stem = (spec.model_type or _name(config)).lower()
    return (
        f"architecture {_name(config)!r} has no definition; inferred from its tensor names: layers '{prefix}.N' "
        f"of {len(spec.layer)} tensors, {len(spec.pre)} before ({_listing(w.name for w in spec.pre)}), "
        f"{len(spec.post)} after, head {tie}, layer count '{spec.num_layers_key}'; check it with `mergesmith plan`, "
        f"and add mergesmith/arch/data/{stem}.json to make it a definition (README: Architectures)"
    )


@dataclass(frozen=True)
class ArchInput:
    """What the lookup needs from one input model."""

    config: Mapping
    shapes: Mapping[str, Sequence[int]]  # tensor name -> shape, from the file headers
    source: str  # how messages name the model


def check_remote_code(config: Mapping, source: str, trust_remote_code: bool) -> None:
    """ArchitectureError for a model whose class comes from code shipped with it (config.json
    ``auto_map``), unless the user opted in. Merging runs none of that code; the opt-in says the
    user accepts an output whose config, like the input's, loads only with trust_remote_code."""
    auto_map = config.get("auto_map")
    if auto_map and not trust_remote_code:
        modules = sorted({str(v).split(".")[0].split("--")[-1] for v in dict(auto_map).values() if isinstance(v, str)})
        raise ArchitectureError(
            f"{source}: architecture {_name(config)!r} is defined by code shipped with the model (config.json auto_map: "
            f"{', '.join(f'{m}.py' for m in modules) or auto_map}), which transformers runs only with trust_remote_code; "
            "mergesmith can merge it from its tensor names: pass --trust-remote-code (API: trust_remote_code=True)"
        )


def arch_for_models(inputs: Mapping[str, ArchInput], *, trust_remote_code: bool = False) -> dict[str, ArchSpec]:
    """Each input's shipped definition, else one inferred from its tensors; one warning per
    inferred architecture, naming every input that has it. An input whose class needs remote code
    (and has no shipped definition) is refused unless ``trust_remote_code``."""
    specs: dict[str, ArchSpec] = {}
    inferred: dict[str, list[str]] = defaultdict(list)  # warning text -> input keys
    for key, item in inputs.items():
        spec = find_arch(item.config)
        if spec is None:
            check_remote_code(item.config, item.source, trust_remote_code)
            spec = infer_arch(item.config, item.shapes, item.source)
            inferred[inferred_warning(item.config, spec)].append(key)
        specs[key] = with_experts(spec, item.config, item.source, item.shapes)
    check_expert_counts(specs)
    for message, keys in inferred.items():
        warnings.warn(f"{', '.join(repr(k) for k in keys)}: {message}", stacklevel=2)
    return specs
