"""Running a lineage: plan every stage before any exists, fingerprint each stage, and build the
ones whose output is missing or stale, the final one into OUT and every named one into
``<intermediate dir>/<name>``.

``plan_lineage`` stands in for a stage output that is not built yet with its plan (tensor names,
shapes, dtypes); ``merge_lineage`` checks everything first, then merges stage by stage.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mergesmith.api import DEFAULT_SHARD_SIZE, RecipeSource, merge, model_keys
from mergesmith.errors import ConfigError, InputFormatError, OutputExistsError
from mergesmith.io.header import ModelHeader
from mergesmith.io.hub import looks_like_hub_id
from mergesmith.io.reader import TensorInfo
from mergesmith.io.resolve import open_headers
from mergesmith.lineage.parse import (
    Lineage,
    Stage,
    model_references,
    resolved_recipe,
    stage_of,
)
from mergesmith.output.card import model_card
from mergesmith.output.config import output_config
from mergesmith.plan.jobs import Plan
from mergesmith.plan.planner import build_plan

STAGE_RECORD = "mergesmith_stage.json"
MERGED, UP_TO_DATE = "merged", "up to date"


def default_intermediate_dir(out: str | Path) -> Path:
    """``OUT.stages`` beside OUT: each output keeps its own stages, and removing both is one glob."""
    out = Path(out).resolve()
    return out.with_name(out.name + ".stages")


@dataclass(frozen=True)
class StageOutcome:
    stage: str  # its name, or "final merge"
    path: Path  # its output directory
    status: str  # MERGED or UP_TO_DATE
    fingerprint: str
    tensors: int  # output tensors in its plan


def _path_identity(key: str, base_dir: Path | None) -> Any:
    """A cheap identity of a model that is not a stage: its path and each file's name, size, mtime.

    Sizes and mtimes, not content hashes: hashing multi-GB checkpoints on every run would cost
    about what the skipped merges cost, and rewriting a checkpoint changes its mtime (the rule make
    and rsync use). Only a rewrite that keeps both size and mtime goes unnoticed.
    """
    candidates = [Path(key).expanduser()]
    if base_dir is not None and not Path(key).is_absolute():
        candidates.append(base_dir / key)
    found = next((c for c in candidates if c.exists()), None)
    if found is None:
        return key  # not local (a Hub id, or missing: planning reports it)
    files = [found] if found.is_file() else sorted(p for p in found.iterdir() if p.is_file())
    return [str(found.resolve()), [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]]


def fingerprints(lineage: Lineage, seed: int = 0) -> dict[str, str]:
    """Stage label → sha256 of its canonical recipe, the seed and its inputs' fingerprints.

    A stage input contributes that stage's fingerprint, so editing a stage changes it and every
    stage downstream, and nothing else.
    """
    prints: dict[str, str] = {}
    for stage in lineage.stages:
        inputs = {}
        for ref in model_references(stage.recipe):
            head, *adapter = ref.split("+", 1)
            first = prints[head] if head in stage.uses else _path_identity(head, lineage.base_dir)
            inputs[ref] = [first] + [_path_identity(a, lineage.base_dir) for a in adapter]
        payload = {"recipe": stage.recipe.model_dump(mode="json", exclude_none=True), "inputs": inputs, "seed": seed}
        prints[stage.label] = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
    return prints


def _planned_input(name: str, plan: Plan, models: Mapping[str, ModelHeader]) -> ModelHeader:
    """A stage output not built yet, as planning sees it: its config and tensor headers, from its plan."""
    infos = {job.output: TensorInfo(job.output, job.shape, job.out_dtype) for job in plan.jobs}
    return ModelHeader(name, Path(name), output_config(plan, models), infos)


def _found(part: str, base_dir: Path | None) -> Path | None:
    path = Path(part).expanduser()
    return next((c for c in (path, (base_dir or Path.cwd()) / path) if c.exists()), None)


def _check_references(lineage: Lineage, stage: Stage, keys: list[str], planned: Mapping[str, ModelHeader]) -> None:
    """What planning alone would miss: a bare name that is neither a stage nor a path (a misspelt
    stage), and an adapter on a stage output (checked against the planned tensors, so a bad one
    fails before stage 1 writes a byte)."""
    from mergesmith.io.lora import read_adapter

    for key in keys:
        head, _, adapter = key.partition("+")
        if stage_of(key, planned) is None:
            if "/" not in head and _found(head, lineage.base_dir) is None:
                names = ", ".join(f"'{s.name}'" for s in lineage.stages if s.name) or "none"
                raise ConfigError(
                    f"{lineage.where(stage)}: model '{head}' not found: it is neither a stage of this "
                    f"lineage (stages: {names}) nor a model directory; fix the name"
                )
            continue
        if adapter and (found := _found(adapter.split("@", 1)[0], lineage.base_dir)) is not None:
            read_adapter(key, found, planned[head].tensors)
        elif adapter and not looks_like_hub_id(adapter):  # a Hub adapter is fetched when the stage runs
            raise InputFormatError(
                f"{lineage.where(stage)}: model '{key}': adapter '{adapter}' not found; give the PEFT adapter directory"
            )


def plan_lineage(lineage: Lineage, *, seed: int = 0, allow_pickle: bool = False) -> tuple[tuple[Stage, Plan], ...]:
    """Every stage's plan, before any stage is built; inputs that are stages appear by name."""
    planned: dict[str, ModelHeader] = {}
    plans = []
    for stage in lineage.stages:
        keys = model_keys(stage.recipe)
        _check_references(lineage, stage, keys, planned)
        local = [k for k in keys if stage_of(k, planned) is None]
        # Headers only: no Hub weight is downloaded and no adapter folded to plan a lineage.
        models = open_headers(local, base_dir=lineage.base_dir, allow_pickle=allow_pickle)
        for key in keys:
            if key not in models:
                models[key] = dataclasses.replace(planned[stage_of(key, planned)], key=key)
        the_plan = build_plan(stage.recipe, models, source=lineage.where(stage), seed=seed)
        if stage.name:
            planned[stage.name] = _planned_input(stage.name, the_plan, models)
        plans.append((stage, the_plan))
    return tuple(plans)


def _read_record(path: Path) -> dict | None:
    try:
        record = json.loads((path / STAGE_RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _needs_merge(target: Path, stage: Stage, fingerprint: str, force: bool) -> bool:
    """True when ``target`` is missing or an earlier build of this stage from other inputs.

    A directory without this stage's record is somebody else's: it is replaced only with --force.
    """
    if not target.exists() or force:
        return True
    record = _read_record(target)
    if record is None or record.get("stage") != stage.label:
        raise OutputExistsError(
            f"{target} exists and is not a build of stage '{stage.label}' (no matching {STAGE_RECORD}); remove it, "
            "choose another output or --intermediate-dir, or pass --force to rebuild every stage"
        )
    return record.get("fingerprint") != fingerprint


def _stage_source(
    lineage: Lineage,
    stage: Stage,
    outputs: Mapping[str, Path],
    fingerprint: str,
    out: Path,
) -> RecipeSource:
    recipe = resolved_recipe(stage, outputs)
    record = {"stage": stage.label, "fingerprint": fingerprint, "lineage": lineage.source}
    extra = ((STAGE_RECORD, json.dumps(record, indent=2) + "\n"),)
    where = lineage.where(stage)
    if stage is not lineage.final:
        # An intermediate's recipe names the stage directories it was built from.
        text = yaml.safe_dump(recipe.model_dump(mode="json", exclude_none=True), sort_keys=False)
        return RecipeSource(recipe, text, where, lineage.base_dir, extra_files=extra)
    steps = [(s.label, s.recipe.merge_method, s.recipe.referenced_models()) for s in lineage.stages]
    card = model_card(stage.recipe, lineage.text, out.name, lineage=steps, base_dir=lineage.base_dir)
    return RecipeSource(recipe, lineage.text, where, lineage.base_dir, card=card, extra_files=extra)


def merge_lineage(
    lineage: Lineage,
    out: str | Path,
    *,
    intermediate_dir: str | Path | None = None,
    force: bool = False,
    shard_size: str = DEFAULT_SHARD_SIZE,
    seed: int = 0,
    allow_pickle: bool = False,
    progress: bool = False,
    workers: int = 2,
    on_stage: Callable[[StageOutcome], None] | None = None,
    **merge_options: Any,
) -> tuple[StageOutcome, ...]:
    """Build each stage whose output is missing or stale, in order; the final one into ``out``.

    ``force`` rebuilds every stage and replaces whatever is in the way; ``on_stage`` hears of each
    stage as it is done; ``merge_options`` (e.g. ``lora_cache``) go to every stage's
    :func:`mergesmith.merge`. Everything is planned and checked first, so a bad stage 3 stops the
    run before stage 1 writes a byte.
    """
    out = Path(out)
    inter = Path(intermediate_dir).resolve() if intermediate_dir is not None else default_intermediate_dir(out)
    targets = {s.label: out if s is lineage.final else inter / s.name for s in lineage.stages}
    outputs = {s.name: targets[s.label] for s in lineage.stages if s.name}
    prints = fingerprints(lineage, seed)
    todo = {s.label: _needs_merge(targets[s.label], s, prints[s.label], force) for s in lineage.stages}
    plans = {stage.label: plan for stage, plan in plan_lineage(lineage, seed=seed, allow_pickle=allow_pickle)}
    outcomes = []
    for stage in lineage.stages:
        target, label = targets[stage.label], stage.label
        if todo[label]:
            merge(
                _stage_source(lineage, stage, outputs, prints[label], out),
                target,
                force=target.exists(),
                shard_size=shard_size,
                seed=seed,
                allow_pickle=allow_pickle,
                progress=progress,
                workers=workers,
                **merge_options,
            )
        status = MERGED if todo[label] else UP_TO_DATE
        outcome = StageOutcome(label, target, status, prints[label], len(plans[label].jobs))
        if on_stage is not None:
            on_stage(outcome)
        outcomes.append(outcome)
    return tuple(outcomes)
