"""The library's front door: plan a recipe, run a merge. The CLI is a thin layer over this."""

from __future__ import annotations

import contextlib
import errno
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from mergesmith.config.load import load_recipe, parse_recipe, read_text
from mergesmith.config.references import parse_reference
from mergesmith.config.schema import Recipe
from mergesmith.errors import InputFormatError, OutputWriteError
from mergesmith.io.resolve import close_models, local_paths, open_headers, open_models
from mergesmith.io.writer import ShardedWriter, parse_size
from mergesmith.output.card import model_card
from mergesmith.output.config import copy_remote_code, output_config
from mergesmith.output.directory import check_not_input, check_target, staged_directory
from mergesmith.output.tokenizer import (
    check_tokenizer_files,
    copy_generation_config,
    copy_processor_files,
    copy_tokenizer,
    resolve_chat_template,
    write_chat_template,
)
from mergesmith.plan.jobs import Plan
from mergesmith.plan.planner import build_plan

DEFAULT_SHARD_SIZE = "5GB"
# Where `base+adapter` references are merged once and reused (io/lora.py).
DEFAULT_LORA_CACHE = Path("~/.cache/mergesmith/lora")
# Where the calibration stage keeps Gram matrices of data-aware methods (mergesmith/calibrate).
DEFAULT_CALIBRATION_CACHE = Path("~/.cache/mergesmith/calibration")


@dataclass(frozen=True)
class RecipeSource:
    recipe: Recipe
    text: str  # the YAML as the user wrote it, kept for the card
    name: str  # file name or "<recipe>", for messages
    base_dir: Path | None
    # Set by multi-stage lineages (mergesmith/lineage/): a card of their own, and files (the
    # stage record) written into the staging directory, so a complete output always has them.
    card: str | None = None
    extra_files: tuple[tuple[str, str], ...] = ()


def read_recipe(recipe: str | Path | Recipe | dict | RecipeSource) -> RecipeSource:
    if isinstance(recipe, RecipeSource):
        return recipe
    if isinstance(recipe, Recipe):
        text = yaml.safe_dump(recipe.model_dump(mode="json", exclude_none=True), sort_keys=False)
        return RecipeSource(recipe, text, "<recipe>", None)
    if isinstance(recipe, dict):
        return RecipeSource(parse_recipe(recipe), yaml.safe_dump(recipe, sort_keys=False), "<recipe>", None)
    parsed = load_recipe(recipe)
    path = Path(recipe) if isinstance(recipe, Path) or "\n" not in str(recipe) else None
    if path is None:
        return RecipeSource(parsed, str(recipe), "<recipe>", None)
    return RecipeSource(parsed, read_text(path), str(path), path.parent.resolve())


def model_keys(recipe: Recipe) -> list[str]:
    """The models a recipe opens: every referenced model, plus a model named as tokenizer source."""
    keys = list(recipe.referenced_models())
    choice = recipe.tokenizer_choice
    if choice not in (None, "base", "union") and choice not in keys:
        keys.append(choice)
    return keys


def plan(recipe, *, seed: int = 0, allow_pickle: bool = False, trust_remote_code: bool = False) -> Plan:
    """What a merge would do, tensor by tensor; reads only headers and configs.

    Hub models are not downloaded: their config and tokenizer files are, and their tensor headers
    are read over HTTP range requests. Adapters are checked, not folded; no file stays open.
    """
    src = read_recipe(recipe)
    headers = open_headers(model_keys(src.recipe), base_dir=src.base_dir, allow_pickle=allow_pickle)
    return build_plan(src.recipe, headers, source=src.name, seed=seed, trust_remote_code=trust_remote_code)


def calibration_status(recipe, the_plan: Plan, cache_root, allow_pickle: bool = False) -> list[dict]:
    """Per calibrated model: its texts (resolved), tokens, cache entry and whether it is there.
    Keying an entry reads every byte of the model's files (about 2 s per GB)."""
    from mergesmith.calibrate.stage import check_cache_root, prepare

    root = Path(cache_root).expanduser()
    check_cache_root(root)  # what the merge would refuse, `plan` refuses too
    src = read_recipe(recipe)
    headers = open_headers(model_keys(src.recipe), base_dir=src.base_dir, allow_pickle=allow_pickle)
    return [
        {
            "model": p.calibration.model,
            "texts": [str(t.path) for t in p.texts],
            "tokens": len(p.ids),
            "cache": str(root / p.key) if p.key else None,
            "cached": p.key is not None and (root / p.key / "calibration.json").is_file(),
        }
        for p in prepare(the_plan, headers, src.base_dir)
    ]


def merge(
    recipe,
    out: str | Path,
    *,
    force: bool = False,
    shard_size: str = DEFAULT_SHARD_SIZE,
    seed: int = 0,
    allow_pickle: bool = False,
    progress: bool = False,
    workers: int = 2,
    lora_cache: str | Path | None = DEFAULT_LORA_CACHE,
    device: str = "cpu",
    status: Callable[[str], None] | None = None,
    calibration_cache: str | Path | None = DEFAULT_CALIBRATION_CACHE,
    trust_remote_code: bool = False,
) -> Plan:
    """Run a recipe into ``out``: shards, config, tokenizer, recipe and card appear atomically.

    ``lora_cache``: where ``base+adapter`` inputs are merged and kept for later runs; None folds
    adapters in on the fly instead, writing nothing outside ``out``. ``calibration_cache``: where the Gram
    matrices of a data-aware method (regmean) are kept for later runs; None computes them into a
    temporary directory. ``status`` hears what the merge
    does where no progress bar says it ("reading metadata", "folding adapters", ...).
    ``trust_remote_code``: merge inputs whose class is defined by code shipped with them (config.json
    ``auto_map``) from their tensor names, and copy that code beside the output's config.
    """
    say = status or (lambda _message: None)
    src = read_recipe(recipe)
    out = Path(out)
    from mergesmith.execute.runner import (  # torch: only a merge needs it
        check_device,
        slots,
    )

    device = check_device(device)
    keys = model_keys(src.recipe)
    check_not_input(out, _input_paths(src, keys))
    check_target(out, force)
    size = parse_size(shard_size)
    cache = Path(lora_cache).expanduser() if lora_cache is not None else None
    # Planned from headers first, so a bad recipe (shapes that differ, a wrong adapter) is refused
    # before a Hub weight is downloaded or the LoRA cache is touched; then the inputs are opened for
    # reading (weights downloaded, adapters folded) and planned again from what was opened.
    say("reading metadata and planning")
    template = _header_checks(src, keys, out, seed, allow_pickle, trust_remote_code)
    adapters = any(parse_reference(k).lora is not None for k in keys)
    say("opening the inputs and folding adapters" if adapters else "opening the inputs")
    models = open_models(keys, base_dir=src.base_dir, allow_pickle=allow_pickle, lora_cache=cache)
    try:
        with warnings.catch_warnings():  # said once already, by the first plan
            warnings.simplefilter("ignore")
            the_plan = build_plan(src.recipe, models, source=src.name, seed=seed, trust_remote_code=trust_remote_code)
        calibrated = _statistics(the_plan, models, src, calibration_cache, say, progress)
        with calibrated as statistics, staged_directory(out, force) as staging, _write_errors(out, staging):
            writer = ShardedWriter(staging, slots(the_plan), size)
            try:
                _run(the_plan, {**models, **statistics}, writer, progress, workers, device)
                writer.finish()
            except BaseException:
                writer.close()
                raise
            say("writing config, tokenizer and card")
            _write_metadata(the_plan, models, src, staging, out.name, template)
    finally:
        close_models(models)
    return the_plan


def _statistics(the_plan: Plan, models, src: RecipeSource, cache, say, progress: bool):
    """The calibration stage's inputs (``model#grams``), or none when no method needs them."""
    if not the_plan.calibration:
        return contextlib.nullcontext({})
    from mergesmith.calibrate.stage import statistics_inputs

    root = Path(cache).expanduser() if cache is not None else None
    return statistics_inputs(the_plan, models, src.base_dir, root, say, progress)


def _header_checks(
    src: RecipeSource, keys: list[str], out: Path, seed: int, allow_pickle: bool, trust_remote_code: bool = False
) -> str | None:
    """Every check that headers allow, before any weight is fetched; the chat template to write."""
    headers = open_headers(keys, base_dir=src.base_dir, allow_pickle=allow_pickle)
    check_not_input(out, [(f"model '{k}'", m.path) for k, m in headers.items()])  # Hub snapshots too
    the_plan = build_plan(src.recipe, headers, source=src.name, seed=seed, trust_remote_code=trust_remote_code)
    check_tokenizer_files(headers[the_plan.tokenizer_donor])
    if the_plan.calibration:  # texts found and long enough before any weight is read
        from mergesmith.calibrate.stage import prepare

        prepare(the_plan, headers, src.base_dir, keys=False)
    if not src.recipe.chat_template:
        return None
    return resolve_chat_template(src.recipe.chat_template, headers, src.name)


@contextlib.contextmanager
def _write_errors(out: Path, staging: Path):
    """An OSError while the output is written: one error naming the output (or the input file the
    system names) and the reason; the staging directory is removed by the caller."""
    try:
        yield
    except OSError as exc:
        reason = f"{exc.strerror or exc} ({errno.errorcode.get(exc.errno, exc.errno)})"
        if exc.filename and not Path(exc.filename).is_relative_to(staging):
            raise InputFormatError(f"{exc.filename}: cannot read it: {reason}") from None
        fix = {
            errno.ENOSPC: "free space there",
            errno.EFBIG: "raise the file-size limit or lower shard_size",
            errno.EDQUOT: "raise the quota there",
        }.get(exc.errno, "check the disk and retry")
        raise OutputWriteError(f"cannot write {out}: {reason}; {fix}; the incomplete output was removed") from None


def _input_paths(src: RecipeSource, keys) -> list[tuple[str, Path]]:
    paths = [(f"model '{key}'", path) for key in keys for path in local_paths(key, src.base_dir)]
    if src.name != "<recipe>":
        paths.append(("the recipe", Path(src.name)))
    return paths


def _run(the_plan, models, writer, progress: bool, workers: int, device: str) -> None:
    from mergesmith.execute.runner import execute

    if not progress:
        execute(the_plan, models, writer, workers=workers, device=device)
        return
    from tqdm import tqdm

    with tqdm(total=len(the_plan.jobs), unit="tensor", desc="merging") as bar:
        execute(the_plan, models, writer, bar.update, workers=workers, device=device)


def _write_metadata(the_plan, models, src: RecipeSource, staging: Path, name: str, template) -> None:
    config = output_config(the_plan, models)
    (staging / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    copy_generation_config(models[the_plan.config_donor], staging)
    copy_processor_files(models[the_plan.config_donor], staging)
    copy_remote_code(models[the_plan.config_donor], staging)
    copy_tokenizer(models[the_plan.tokenizer_donor], staging, the_plan.vocab)
    if template:
        write_chat_template(template, staging)
    (staging / "mergesmith_config.yml").write_text(src.text)
    (staging / "README.md").write_text(
        src.card if src.card is not None else model_card(src.recipe, src.text, name, base_dir=src.base_dir)
    )
    for file_name, content in src.extra_files:
        (staging / file_name).write_text(content)
