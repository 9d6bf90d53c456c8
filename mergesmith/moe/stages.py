"""A MoE config as the last document of a lineage: experts (or the base) that are merge stages.

A file of several YAML documents whose last one is a mergekit-moe config: every document before it
is a named merge stage in mergekit-multi's format (README "Multi-stage lineages"), and the MoE
config's ``base_model``, ``source_model`` and ``tokenizer_source`` may name those stages. Each
stage the MoE uses is built with the stages it uses, by the lineage runner, into
``<intermediate dir>/<name>`` (an up-to-date one is kept); the MoE is then built from those
directories. Every stage and the MoE config are parsed before anything is built; each stage's
lineage is planned (its references checked) by the runner just before it is built.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mergesmith.config.load import load_yaml, parse_recipe, read_text
from mergesmith.errors import ConfigError
from mergesmith.lineage.parse import Lineage, model_references, parse_lineage, stage_of
from mergesmith.moe.config import MoeSource, is_moe_document, parse_moe


@dataclass(frozen=True)
class MoeLineage:
    stages: Mapping[str, Lineage]  # each stage the MoE names, as the lineage that ends in it
    moe: dict  # the MoE document as written (stage names unresolved)
    text: str  # the whole file, for the card
    source: str
    base_dir: Path | None


def read_moe_lineage(path: str | Path) -> MoeLineage | None:
    """The file's stages and MoE config, or None when it is not a lineage ending in a MoE config."""
    path = Path(path)
    try:
        text = read_text(path, "MoE config")
        docs = [doc for doc in load_yaml(text, str(path), documents=True) if doc is not None]
    except (OSError, ConfigError):
        return None
    if len(docs) < 2 or not is_moe_document(docs[-1]):
        return None
    return _parse(docs[:-1], docs[-1], text, str(path), path.parent.resolve())


def _parse(docs: list[Any], moe: dict, text: str, source: str, base_dir: Path) -> MoeLineage:
    named: dict[str, dict] = {}
    for number, doc in enumerate(docs, 1):
        if is_moe_document(doc):
            raise ConfigError(
                f"{source}: document {number} is a MoE config; only the last document may be one (the MoE built into OUT)"
            )
        name = doc.get("name") if isinstance(doc, dict) else None
        if not isinstance(name, str) or not name:
            raise ConfigError(
                f"{source}: document {number} has no 'name'; every merge stage before the MoE config needs one "
                "(the MoE config names it as base_model or source_model)"
            )
        if name in named:
            raise ConfigError(f"{source}: two documents are named '{name}'; stage names must be unique")
        named[name] = doc
    config = parse_moe(moe, f"{source}, MoE config")  # a bad MoE config fails before any stage runs
    used = [s for s in (stage_of(ref, named) for ref in config.referenced_models()) if s]
    if not used:
        raise ConfigError(
            f"{source}: the MoE config names none of the stages {', '.join(sorted(named))}; "
            "use a stage's name as base_model or source_model, or drop the stages"
        )
    stages = {}
    for name in dict.fromkeys(used):
        needed = _closure(name, named, source)
        sub = [doc for stage, doc in named.items() if stage in needed]
        stages[name] = parse_lineage(yaml.safe_dump_all(sub, sort_keys=False), source, base_dir)
    return MoeLineage(stages, moe, text, source, base_dir)


def _closure(target: str, named: Mapping[str, dict], source: str) -> set[str]:
    """``target`` and every stage it uses, directly or not (a cycle is reported by parse_lineage)."""
    need: set[str] = set()
    todo = [target]
    while todo:
        name = todo.pop()
        if name in need:
            continue
        need.add(name)
        recipe = parse_recipe({k: v for k, v in named[name].items() if k != "name"}, f"{source}, stage '{name}'")
        todo += [s for s in (stage_of(ref, named) for ref in model_references(recipe)) if s]
    return need


def build_stages(lineage: MoeLineage, intermediate_dir: Path, run: Callable[[Lineage, Path], None]) -> dict[str, Path]:
    """Each stage the MoE names built into ``intermediate_dir/<name>`` by ``run(lineage, out)``."""
    outputs = {}
    for name, stages in lineage.stages.items():
        outputs[name] = intermediate_dir / name
        run(stages, outputs[name])
    return outputs


def resolved_source(lineage: MoeLineage, outputs: Mapping[str, Path]) -> MoeSource:
    """The MoE config with every stage name replaced by that stage's output directory."""

    def swap(ref: Any) -> Any:
        name = stage_of(ref, outputs) if isinstance(ref, str) else None
        return str(outputs[name]) + ref[len(name) :] if name else ref

    doc = dict(lineage.moe)
    for key in ("base_model", "tokenizer_source"):
        if key in doc:
            doc[key] = swap(doc[key])
    for key in ("experts", "shared_experts"):
        if isinstance(doc.get(key), list):
            doc[key] = [
                {**e, "source_model": swap(e.get("source_model"))} if isinstance(e, dict) else e for e in doc[key]
            ]
    config = parse_moe(doc, f"{lineage.source}, MoE config")
    return MoeSource(config, lineage.text, lineage.source, lineage.base_dir)
