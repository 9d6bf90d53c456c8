"""Reading a lineage: YAML documents → stages in dependency order, final merge last. No model is
opened here; ``read_lineage`` reads the lineage file itself and nothing else.

A lineage file holds several YAML documents, each a recipe plus ``name:``; a stage uses another by
writing its name where a model goes (A+B → C, C+B → D, D+E → F). The final merge is the one
unnamed document, else the one stage no other stage uses.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mergesmith.config.load import load_yaml, parse_recipe, read_text
from mergesmith.config.schema import Recipe
from mergesmith.errors import ConfigError

FINAL_LABEL = "final merge"
# Keys whose string values name a model; like mergekit-multi, a stage name is replaced wherever a
# model reference stands (``tokenizer.tokens`` entries included). ``base``/``union`` are keywords.
_REF_KEYS = frozenset({"model", "base_model", "tokenizer_source", "source"})
_KEYWORDS = frozenset({"base", "union"})


@dataclass(frozen=True)
class Stage:
    name: str | None  # None: mergekit-multi's unnamed final merge
    document: int  # 1-based position in the file, for messages
    recipe: Recipe  # as written: other stages appear by name
    uses: tuple[str, ...]  # the stages it reads, by name

    @property
    def label(self) -> str:
        return self.name or FINAL_LABEL


@dataclass(frozen=True)
class Lineage:
    stages: tuple[Stage, ...]  # dependency order; the last one is the final merge, written to OUT
    text: str  # the file as written, for the final card
    source: str  # file name or "<lineage>", for messages
    base_dir: Path | None  # where relative model paths are looked up

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def where(self, stage: Stage) -> str:
        return f"{self.source}, stage '{stage.name}'" if stage.name else f"{self.source}, document {stage.document}"


def is_lineage(text: str) -> bool:
    """Several YAML documents, or one with ``name:``; anything else stays a plain recipe."""
    docs: list = []
    try:
        docs.extend(doc for doc in yaml.safe_load_all(text) if doc is not None)
    except yaml.YAMLError:
        return bool(docs)  # a broken later document: report it as part of the lineage
    return len(docs) > 1 or (len(docs) == 1 and isinstance(docs[0], dict) and "name" in docs[0])


def is_lineage_file(path: str | Path) -> bool:
    path = Path(path)
    return path.is_file() and is_lineage(read_text(path))


def _map_refs(value: Any, fn: Callable[[str], str], key: str | None = None) -> Any:
    """``value`` with ``fn`` applied to every string that stands where a model goes."""
    if isinstance(value, dict):
        return {k: _map_refs(v, fn, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_map_refs(v, fn, key) for v in value]
    if isinstance(value, str) and key in _REF_KEYS and value not in _KEYWORDS:
        return fn(value)
    return value


def model_references(recipe: Recipe) -> list[str]:
    """Every model reference in ``recipe``, stage names included, first occurrence first."""
    found: list[str] = []
    _map_refs(recipe.model_dump(mode="json", exclude_none=True), lambda ref: found.append(ref) or ref)
    return list(dict.fromkeys(found))


def stage_of(ref: str, names) -> str | None:
    """The stage ``ref`` reads, if it names one of ``names``; else None."""
    # ``C+adapter`` is stage C with a LoRA adapter on top, as mergekit-multi reads it.
    head = ref.split("+", 1)[0]
    return head if head in names else None


def _take_name(doc: Any, number: int, source: str) -> str | None:
    where = f"{source}, document {number}"
    if not isinstance(doc, dict):
        raise ConfigError(f"{where}: a stage is a YAML mapping (a recipe plus 'name'), got {type(doc).__name__}")
    if "name" not in doc:
        return None
    name = doc["name"]
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{where}: 'name' is the stage's name, a non-empty string; got {name!r}")
    # The name becomes <intermediate dir>/<name>, and '+'/'@' separate the parts of a reference.
    if (
        any(p == "" or p.startswith(".") for p in name.split("/"))
        or any(c in name for c in "+@\\")
        or name == FINAL_LABEL
    ):
        raise ConfigError(
            f"{where}: stage name '{name}' cannot be used (no empty or dot-led path parts, no '+', '@' "
            f"or '\\', not '{FINAL_LABEL}'); rename it"
        )
    return name


def _cycle(pending: list[Stage]) -> str:
    """One cycle among stages none of which could be ordered: each waits on another pending one."""
    by_name = {s.name: s for s in pending if s.name}
    walk: list[str] = []
    stage = pending[0]
    while stage.label not in walk:
        walk.append(stage.label)
        stage = next(by_name[u] for u in stage.uses if u in by_name)
    loop = walk[walk.index(stage.label) :] + [stage.label]
    return " → ".join(f"'{label}'" for label in loop)


def _dependency_order(stages: list[Stage], source: str) -> list[Stage]:
    """Stages after the stages they use; among ready stages, file order."""
    for stage in stages:
        if stage.name in stage.uses:
            raise ConfigError(
                f"{source}: stage '{stage.name}' (document {stage.document}) uses its own output; "
                "a stage can only use other stages or models: fix that model reference"
            )
    done: set[str] = set()
    order: list[Stage] = []
    pending = list(stages)
    while pending:
        ready = next((s for s in pending if done.issuperset(s.uses)), None)
        if ready is None:
            raise ConfigError(
                f"{source}: stages use each other in a cycle ({_cycle(pending)}); "
                "a stage can only use stages that do not need its output"
            )
        order.append(ready)
        pending.remove(ready)
        done.add(ready.label)
    return order


def _final(stages: list[Stage], source: str) -> Stage:
    unnamed = [s for s in stages if s.name is None]
    if len(unnamed) > 1:
        numbers = ", ".join(str(s.document) for s in unnamed)
        raise ConfigError(
            f"{source}: documents {numbers} have no 'name'; only the final merge may be unnamed "
            "(it is written to OUT), so give the others a name"
        )
    if unnamed:
        return unnamed[0]
    used = {u for s in stages for u in s.uses}
    unused = [s for s in stages if s.name not in used]
    if len(unused) > 1:
        names = ", ".join(f"'{s.name}'" for s in unused)
        raise ConfigError(
            f"{source}: stages {names} are used by no other stage, so which one is OUT is unclear; "
            "remove 'name' from the final merge"
        )
    return unused[0]


def parse_lineage(text: str, source: str = "<lineage>", base_dir: Path | None = None) -> Lineage:
    """YAML documents → stages in dependency order, final merge last; strict, like a recipe."""
    docs = [doc for doc in load_yaml(text, source, documents=True) if doc is not None]
    parsed: list[tuple[str | None, int, Recipe]] = []
    first_seen: dict[str, int] = {}
    for number, doc in enumerate(docs, 1):
        name = _take_name(doc, number, source)
        if name is not None and name in first_seen:
            raise ConfigError(
                f"{source}: documents {first_seen[name]} and {number} are both named '{name}'; "
                "stage names must be unique"
            )
        if name is not None:
            first_seen[name] = number
        where = f"{source}, stage '{name}'" if name else f"{source}, document {number}"
        parsed.append((name, number, parse_recipe({k: v for k, v in doc.items() if k != "name"}, where)))
    if not parsed:
        raise ConfigError(f"{source}: no recipe in the file; a lineage is YAML documents separated by '---'")
    stages = []
    for name, number, recipe in parsed:
        uses = (stage_of(ref, first_seen) for ref in model_references(recipe))
        stages.append(Stage(name, number, recipe, tuple(dict.fromkeys(u for u in uses if u))))
    ordered = _dependency_order(stages, source)
    final = _final(stages, source)
    return Lineage(tuple([s for s in ordered if s is not final] + [final]), text, source, base_dir)


def read_lineage(path_or_text: str | Path) -> Lineage:
    """A lineage from a file path, or from YAML text (it holds a newline) with paths relative to the cwd."""
    if isinstance(path_or_text, Path) or "\n" not in str(path_or_text):
        path = Path(path_or_text)
        if not path.is_file():
            raise ConfigError(f"{path}: lineage file not found")
        return parse_lineage(read_text(path, "lineage"), str(path), path.parent.resolve())
    return parse_lineage(str(path_or_text))


def resolved_recipe(stage: Stage, outputs: Mapping[str, Path]) -> Recipe:
    """The stage's recipe with every stage name replaced by that stage's output directory."""

    def swap(ref: str) -> str:
        name = stage_of(ref, outputs)
        return str(outputs[name]) + ref[len(name) :] if name else ref

    return Recipe.model_validate(_map_refs(stage.recipe.model_dump(mode="json", exclude_none=True), swap))
