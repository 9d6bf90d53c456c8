"""Vision-language models as data: where the language model sits inside a VLM checkpoint.

One JSON file per family in ``data/multimodal/``: the VLM classes it covers, the config.json
key holding the language model's config (``text_config``), the text-only class whose data file
describes the language model (absent: the data file of ``text_config.model_type``), and the
tensor-name layouts checkpoints of the family come in. A layout maps prefixes of the VLM's
language-model tensors (module ``text_decoder``) to the text model's (``language_model.model.``
to ``model.``) and gives the prefixes of the other modules, by mergekit's names (``vision_tower``,
``multi_modal_projector``; the longest matching prefix decides); ``module_layers`` names the
config key of a module's layer count (``vision_config.num_hidden_layers``). transformers 5 saves the older
layout (Gemma 3: ``language_model.model.*``), checkpoints saved by transformers 4.5x carry
``model.language_model.*``; both are listed, the more specific first.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources

from mergesmith.arch.spec import all_architectures
from mergesmith.errors import ArchitectureError

TEXT_MODULE = "text_decoder"  # mergekit's name for a VLM's language model


@dataclass(frozen=True)
class Layout:
    text: tuple[tuple[str, str], ...]  # (prefix in the VLM, prefix in the text model)
    towers: tuple[tuple[str, tuple[str, ...]], ...]  # (module, its prefixes): vision encoder, projector, ...

    def tower(self, name: str) -> str | None:
        """The module (other than the language model) holding ``name``: the longest prefix wins."""
        hits = [(len(p), module) for module, prefixes in self.towers for p in prefixes if name.startswith(p)]
        return max(hits)[1] if hits else None

    def to_text(self, name: str) -> str | None:
        """The text model's name for a VLM tensor of the language model; None for a tower tensor."""
        if self.tower(name) is not None:
            return None
        return next((text + name[len(vlm) :] for vlm, text in self.text if name.startswith(vlm)), None)

    def module(self, name: str) -> str | None:
        return self.tower(name) or (TEXT_MODULE if self.to_text(name) is not None else None)

    def to_vlm(self, name: str) -> str:
        """The VLM's name for a text-model tensor name."""
        for vlm, text in self.text:
            if name.startswith(text):
                return vlm + name[len(text) :]
        raise ArchitectureError(f"tensor {name} has none of the language-model prefixes {[t for _, t in self.text]}")

    def fits(self, names: Iterable[str]) -> bool:
        names = list(names)
        first = self.text[0][0]
        return any(n.startswith(first) and self.to_text(n) is not None for n in names) and all(
            self.module(n) is not None for n in names
        )


@dataclass(frozen=True)
class VlmSpec:
    family: str
    architectures: tuple[str, ...]
    text_config_key: str
    text_architecture: str | None
    layouts: tuple[Layout, ...]
    module_layers: tuple[tuple[str, str], ...] = ()  # (module, dotted config key of its layer count)

    @property
    def modules(self) -> tuple[str, ...]:
        return (TEXT_MODULE, *dict.fromkeys(m for lay in self.layouts for m, _ in lay.towers))

    def layout(self, names: Iterable[str], source: str) -> Layout:
        names = list(names)
        for layout in self.layouts:
            if layout.fits(names):
                return layout
        known = "; ".join(
            f"{[v for v, _ in lay.text]} + {[p for _, ps in lay.towers for p in ps]}" for lay in self.layouts
        )
        raise ArchitectureError(
            f"{source}: the {self.family} checkpoint's tensor names fit none of the known layouts ({known}); "
            "re-save it with transformers' save_pretrained"
        )

    def text_config(self, config: Mapping, source: str) -> dict:
        """The language model's config as a text-only config.json (class named, tying carried over)."""
        text = config.get(self.text_config_key)
        if not isinstance(text, Mapping):
            raise ArchitectureError(f"{source}: config.json has no '{self.text_config_key}' section; add it")
        view = dict(text)
        if "tie_word_embeddings" not in view and "tie_word_embeddings" in config:
            view["tie_word_embeddings"] = config["tie_word_embeddings"]
        view["architectures"] = [self.text_architecture or _text_class(view.get("model_type"), source)]
        return view


def _text_class(model_type, source: str) -> str:
    for spec in all_architectures():
        if spec.model_type == model_type:
            return spec.architectures[0]
    raise ArchitectureError(
        f"{source}: the language model's model_type {model_type!r} has no definition; "
        f"supported: {', '.join(sorted(s.model_type for s in all_architectures()))}"
    )


def _parse(family: str, data: dict) -> VlmSpec:
    layouts = tuple(
        Layout(tuple(lay["text"].items()), tuple((m, tuple(ps)) for m, ps in lay["towers"].items()))
        for lay in data["layouts"]
    )
    return VlmSpec(
        family,
        tuple(data["architectures"]),
        data["text_config_key"],
        data.get("text_architecture"),
        layouts,
        tuple(data.get("module_layers", {}).items()),
    )


@cache
def all_vlms() -> tuple[VlmSpec, ...]:
    folder = resources.files("mergesmith.arch") / "data" / "multimodal"
    entries = sorted((p for p in folder.iterdir() if p.name.endswith(".json")), key=lambda p: p.name)
    return tuple(_parse(p.name[: -len(".json")], json.loads(p.read_text())) for p in entries)


def find_vlm(config: Mapping) -> VlmSpec | None:
    """The VLM definition naming the model's class, or None."""
    names = config.get("architectures") or []
    return next((spec for spec in all_vlms() if any(n in spec.architectures for n in names)), None)
