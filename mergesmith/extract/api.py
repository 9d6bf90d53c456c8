"""``extract_lora``: a PEFT LoRA adapter that turns BASE into (an approximation of) MODEL.

Module by module, in MODEL's file order: the tensor pair is read (mergesmith.io readers, so a
``base+adapter`` reference, a Hub id, GGUF and sharded inputs all work), Δ is decomposed
(svd.py) or the module saved whole (modules.py says which), the factors are appended to the
adapter file and dropped. The adapter is written into a staging sibling of OUT and renamed into
place when complete; on any error nothing is left behind. Inputs are only read.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

from mergesmith.config.references import parse_reference
from mergesmith.errors import (
    ArchitectureError,
    ConfigError,
    InputFormatError,
    MissingTensorError,
    OutputWriteError,
    ShapeMismatchError,
)
from mergesmith.extract import adapter as files
from mergesmith.extract.modules import ArchFacts, Module, Selection, arch_facts, group
from mergesmith.extract.report import ExtractReport, model_card
from mergesmith.extract.svd import Rank
from mergesmith.extract.tensors import Extraction, Pair
from mergesmith.io.header import ModelHeader
from mergesmith.io.hub import looks_like_hub_id
from mergesmith.io.resolve import close_models, local_paths, open_headers, open_models
from mergesmith.output.directory import check_not_input, check_target, staged_directory

DEFAULT_ENERGY = 0.95  # max_rank "auto" without an energy: keep 95% of each Δ's Σσ²
# Models whose 2-D weights are not all (out, in) Linear weights (GPT-2's Conv1D stores (in, out)).
CONV1D_FAMILIES = ("gpt2",)


def rank_rule(max_rank: int | str, energy: float | None, sv_epsilon: float) -> Rank:
    """The options as a Rank, or a ConfigError naming the bad one."""
    if max_rank == "auto":
        cap = None
        energy = DEFAULT_ENERGY if energy is None else energy
    elif isinstance(max_rank, int) and not isinstance(max_rank, bool) and max_rank >= 1:
        cap = max_rank
    else:
        raise ConfigError(f"max_rank {max_rank!r} (--max-rank) must be a positive integer or 'auto'")
    if energy is not None and not 0 < energy <= 1:
        raise ConfigError(
            f"energy {energy!r} (--energy) is the share of Σσ² to keep: give a number in (0, 1], e.g. 0.95"
        )
    if not sv_epsilon >= 0:
        raise ConfigError(f"sv_epsilon {sv_epsilon!r} (--sv-epsilon) must be 0 or more")
    return Rank(cap, float(sv_epsilon), energy)


def _regex(pattern: str | None, option: str) -> re.Pattern | None:
    if pattern is None:
        return None
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"{option} '{pattern}' is not a regular expression ({exc})") from None


def display_name(key: str) -> str:
    """How adapter_config.json names BASE: a Hub id as written, a local directory by its name —
    never an absolute path, which means nothing on another machine."""
    ref = parse_reference(key)
    parts = [ref.model] + ([ref.lora] if ref.lora else [])
    return "+".join(
        str(p) if looks_like_hub_id(p.path) and not Path(p.path).exists() else Path(p.path).expanduser().resolve().name
        for p in parts
    )


def check_pair(model: ModelHeader, base: ModelHeader) -> None:
    """Same tensor names and shapes, or one line naming the first tensor that differs."""
    for one, other, a, b in ((model, base, "MODEL", "BASE"), (base, model, "BASE", "MODEL")):
        missing = [name for name in one.tensors if name not in other.tensors]
        if missing:
            raise MissingTensorError(
                f"tensor {missing[0]} ({len(missing)} in all) is in {a} {one.key} but not in {b} {other.key}; "
                "extract from a fine-tune of this very base (same architecture and tied embeddings)"
            )
    for name, info in model.tensors.items():
        if info.shape != base.tensors[name].shape:
            raise ShapeMismatchError(
                f"tensor {name} is {list(info.shape)} in MODEL {model.key} but {list(base.tensors[name].shape)} in "
                f"BASE {base.key}; a LoRA adapter cannot change a shape (resized vocabulary?): give the matching base"
            )
    family = model.config.get("model_type")
    if family in CONV1D_FAMILIES:
        raise ArchitectureError(
            f"MODEL {model.key}: {family} stores its Linear layers as Conv1D (in, out); "
            "extract-lora supports Linear and Embedding layers only"
        )


def _modules(model: ModelHeader, selection: Selection) -> tuple[list[Module], ArchFacts]:
    shapes = {name: info.shape for name, info in model.tensors.items()}
    facts = arch_facts(model.config, shapes, f"MODEL {model.key}")
    modules = group(model.tensors, facts.roles)
    for wanted in selection.save_modules:
        if not any(m.name == wanted or m.name.endswith("." + wanted) for m in modules):
            shown = ", ".join(sorted({m.name.rpartition(".")[2] for m in modules}))
            raise ConfigError(
                f"save_modules '{wanted}' (--save-module) names no module of MODEL {model.key}; "
                f"module names end in: {shown}"
            )
    return modules, facts


def _checked_headers(model: str, base: str, out: Path, force: bool) -> dict[str, ModelHeader]:
    if model == base:
        raise InputFormatError(f"MODEL and BASE are both {model}; give the fine-tune and the model it was tuned from")
    inputs = [
        (f"{what} '{key}'", path) for what, key in (("MODEL", model), ("BASE", base)) for path in local_paths(key)
    ]
    check_not_input(out, inputs)
    check_target(out, force)
    headers = open_headers([model, base])
    check_not_input(out, [(f"input '{k}'", h.path) for k, h in headers.items()])  # Hub snapshots too
    check_pair(headers[model], headers[base])
    return headers


def extract_lora(
    model,
    base,
    out,
    *,
    max_rank: int | str,
    sv_epsilon: float = 0.0,
    embed_lora: bool = False,
    save_modules=(),
    include_regex: str | None = None,
    exclude_regex: str | None = None,
    skip_undecomposable: bool = False,
    energy: float | None = None,
    device: str = "cpu",
    force: bool = False,
    progress: bool = False,
    base_name: str | None = None,
) -> ExtractReport:
    """Write into ``out`` a PEFT LoRA adapter of ``model`` − ``base``; returns the per-tensor report.

    ``max_rank``: an int, or "auto" to keep ``energy`` (default 0.95) of each Δ's Σσ²; an int with
    ``energy`` caps the energy rule. ``base_name``: what adapter_config.json calls the base (default:
    a Hub id as given, else the directory's name).
    """
    # imports torch: only an extraction needs it
    from mergesmith.execute.device import check_device

    rule = rank_rule(max_rank, energy, sv_epsilon)
    selection = Selection(
        tuple(save_modules),
        _regex(include_regex, "include_regex (--include-regex)"),
        _regex(exclude_regex, "exclude_regex (--exclude-regex)"),
        embed_lora,
    )
    device = check_device(device)
    model, base, out = str(model), str(base), Path(out)
    headers = _checked_headers(model, base, out, force)
    modules, facts = _modules(headers[model], selection)
    opened = open_models([model, base])
    try:
        pair = Pair(opened[model].reader, opened[base].reader, device)
        with staged_directory(out, force) as staging, _write_errors(out, staging):
            run = Extraction(pair, rule, selection, skip_undecomposable, facts.tied_heads)
            rows, size, config = run.write(
                staging / files.ADAPTER_WEIGHTS, modules, progress, base_name or display_name(base)
            )
            files.write_config(staging, config)
            report = ExtractReport(out, tuple(rows), size, config, _method(rule))
            card = model_card(report, display_name(model), config["base_model_name_or_path"])
            (staging / "README.md").write_text(card, encoding="utf-8")
    finally:
        close_models(opened)
    return report


@contextlib.contextmanager
def _write_errors(out: Path, staging: Path):
    """An OSError while OUT is written: one line naming OUT (or the input file the system names)."""
    try:
        yield
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if exc.filename and not Path(exc.filename).is_relative_to(staging):
            raise InputFormatError(f"{exc.filename}: cannot read it: {reason}") from None
        raise OutputWriteError(
            f"cannot write {out}: {reason}; free space there or check its permissions; "
            "the incomplete output was removed"
        ) from None


def _method(rule: Rank) -> str:
    if rule.max_rank is None:
        how = f"Each rank is the smallest that keeps {100 * rule.energy:g}% of Σσ² (exact SVD)"
    else:
        how = (
            f"Ranks up to {rule.max_rank}"
            + (f", and at most what keeps {100 * rule.energy:g}% of Σσ²" if rule.energy is not None else "")
            + "; randomized SVD (Halko, Martinsson & Tropp 2011) where the rank is far below the matrix's"
        )
    return how + (f"; singular values below {rule.sv_epsilon:g} dropped" if rule.sv_epsilon else "")
