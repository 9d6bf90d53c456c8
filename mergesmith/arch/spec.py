"""Architecture knowledge as data: which tensors a model has, their roles, how layers repeat.

One JSON file per family in ``data/``. A weight entry has a ``name`` (``{layer}`` stands for
the layer index), a ``role`` (embed, attn_q, mlp_down, final_norm, lm_head, ...), and
optionally ``vocab_axis``, ``optional``, ``tied_to`` (names to read instead when the
model ties this tensor to another, e.g. lm_head to the input embeddings) and ``config_flag``
(the config.json key whose true value makes transformers create this optional tensor, e.g.
llama's ``attention_bias``). A file may also give ``tie_word_embeddings`` (the config class's
default, for configs that omit the key) and ``ignored_buffers``: names of non-weight buffers
old checkpoints carry (``rotary_emb.inv_freq``, attention masks), which are not merged.
Any other tensor an input has is an error at plan time, never silently dropped. A model whose
class no file names gets a definition inferred from its tensor names (``infer.py``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from functools import cache
from importlib import resources

from mergesmith.errors import ArchitectureError


@dataclass(frozen=True)
class WeightSpec:
    name: str
    role: str
    vocab_axis: int | None = None
    optional: bool = False
    tied_to: tuple[str, ...] = ()
    config_flag: str | None = None

    def at_layer(self, index: int) -> WeightSpec:
        return replace(self, name=self.name.replace("{layer}", str(index)))


@dataclass(frozen=True)
class ArchSpec:
    family: str
    model_type: str
    architectures: tuple[str, ...]
    num_layers_key: str
    per_layer_keys: tuple[str, ...]
    pre: tuple[WeightSpec, ...]
    layer: tuple[WeightSpec, ...]
    post: tuple[WeightSpec, ...]
    tie_word_embeddings: bool | None = None  # the config class's default; None: unknown (inferred)
    ignored_buffers: tuple[str, ...] = ()  # names, ``{layer}`` for any layer index
    # Mixture-of-experts families (arch/moe.py): config keys for the expert count, the config
    # values under which every layer has experts, and the count once ``{expert}`` is expanded.
    experts_keys: tuple[str, ...] = ()
    experts_require: tuple[tuple[str, str], ...] = ()  # (config key, value as JSON)
    num_experts: int | None = None

    def layer_weights(self, index: int) -> tuple[WeightSpec, ...]:
        return tuple(w.at_layer(index) for w in self.layer)

    def num_layers(self, config: dict, source: str) -> int:
        try:
            return int(config[self.num_layers_key])
        except (KeyError, TypeError, ValueError):
            raise ArchitectureError(
                f"{source}: config.json has no integer '{self.num_layers_key}'; add the layer count"
            ) from None

    def unlisted(self, names: Iterable[str], num_layers: int) -> list[str]:
        """``names`` this definition neither merges nor ignores, for a model of ``num_layers`` layers."""
        known = {w.name for w in self.pre + self.post} | {
            w.at_layer(i).name for i in range(num_layers) for w in self.layer
        }
        ignored = [re.compile(re.escape(t).replace(re.escape("{layer}"), r"\d+")) for t in self.ignored_buffers]
        return sorted(n for n in names if n not in known and not any(p.fullmatch(n) for p in ignored))


def _weights(entries: list[dict]) -> tuple[WeightSpec, ...]:
    return tuple(
        WeightSpec(
            name=e["name"],
            role=e["role"],
            vocab_axis=e.get("vocab_axis"),
            optional=bool(e.get("optional", False)),
            tied_to=tuple(e.get("tied_to", ())),
            config_flag=e.get("config_flag"),
        )
        for e in entries
    )


def _parse(family: str, data: dict) -> ArchSpec:
    return ArchSpec(
        family=family,
        model_type=data["model_type"],
        architectures=tuple(data["architectures"]),
        num_layers_key=data["num_layers_key"],
        per_layer_keys=tuple(data.get("per_layer_keys", ())),
        pre=_weights(data["pre"]),
        layer=_weights(data["layer"]),
        post=_weights(data["post"]),
        tie_word_embeddings=data.get("tie_word_embeddings"),
        ignored_buffers=tuple(data.get("ignored_buffers", ())),
        experts_keys=tuple(data.get("experts_keys", ())),
        experts_require=tuple((k, json.dumps(v)) for k, v in data.get("experts_require", {}).items()),
    )


@cache
def all_architectures() -> tuple[ArchSpec, ...]:
    """Every definition shipped in ``data/``, parsed once."""
    folder = resources.files("mergesmith.arch") / "data"
    specs = []
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".json"):
            specs.append(_parse(entry.name[: -len(".json")], json.loads(entry.read_text())))
    return tuple(specs)


def find_arch(config: Mapping) -> ArchSpec | None:
    """The shipped definition whose ``architectures`` names the model's class, or None."""
    names = config.get("architectures") or []
    for spec in all_architectures():
        if any(name in spec.architectures for name in names):
            return spec
    return None


def supported_architectures() -> list[str]:
    return sorted(a for spec in all_architectures() for a in spec.architectures)


def arch_for_config(config: Mapping, source: str) -> ArchSpec:
    """The definition whose ``architectures`` names the model's class in config.json."""
    spec = find_arch(config)
    if spec is None:
        raise ArchitectureError(
            f"{source}: architecture {config.get('architectures') or config.get('model_type')!r} has no definition; "
            f"supported: {', '.join(supported_architectures())}"
        )
    return spec
