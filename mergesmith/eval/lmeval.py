"""lm-evaluation-harness tasks on a model mergesmith loaded: ``mergesmith eval --lm-eval TASK|YAML|DIR``.

A spec is a task or group name from lm-eval's registry, a task YAML file, or a directory whose
task YAMLs all run. Tasks are built once, before any model loads, so a bad name, a missing data
file or a Hub dataset that cannot be reached fails first, as one ``MergesmithError`` line. Each
model is wrapped as lm-eval's ``HFLM`` (the weights mergesmith already loaded, no second load);
lm-eval's metrics become ``LmEvalScore`` rows named ``lm-eval:<task>/<metric>``.

Local data works offline: relative paths under ``dataset_kwargs: {data_files: ...}`` (and a
``dataset_path`` that names a folder next to the YAML) are resolved against the YAML's folder
rather than the working directory, and ``dataset_path: json`` reads them without the Hub.
"""

from __future__ import annotations

import contextlib
import difflib
import io
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mergesmith.errors import ConfigError, InputFormatError, MergesmithError
from mergesmith.eval.results import LmEvalScore

INSTALL = "pip install 'mergesmith[lmeval]'"
YAML_SUFFIXES = (".yaml", ".yml")
# What lm-eval's simple_evaluate seeds its few-shot sampler with, so shots match `lm_eval` runs.
FEWSHOT_SEED = 1234
# lm-eval's own default: bootstrap only serves metrics without a closed-form stderr (not acc).
BOOTSTRAP_ITERS = 100_000
# datasets' builders that read the files named in data_files (a Hub dataset's data_files are repo paths)
LOCAL_BUILDERS = ("json", "csv", "parquet", "text", "arrow")
LOCAL_DATA_FIX = "give a task YAML with local data (dataset_path: json, dataset_kwargs: {data_files: ...})"


@dataclass(frozen=True)
class LmEvalTasks:
    """lm-eval tasks built (datasets read) once and run on every model; ``sources`` maps name → spec."""

    loaded: Any  # lm-eval's TaskManager.load() dict: tasks, groups, group_map
    sources: dict[str, str]
    zero_shot: frozenset[str]  # tasks whose config pins num_fewshot: 0 (lm-eval never overrides those)


def _require():
    try:
        import lm_eval
        import lm_eval.evaluator
    except ImportError as exc:
        raise MergesmithError(f"--lm-eval needs lm-eval-harness ({exc}); install it: {INSTALL}") from exc
    return lm_eval


@contextlib.contextmanager
def _quiet(enabled: bool):
    """lm-eval and datasets draw bars and log to stderr; with progress off, keep all of it away."""
    if not enabled:
        yield
        return
    import datasets

    bars = datasets.is_progress_bar_enabled()
    logger = logging.getLogger("lm_eval")
    level = logger.level
    datasets.disable_progress_bars()
    logger.setLevel(logging.ERROR)
    try:
        # lm-eval's per-task "building requests" bar has no switch; its text goes nowhere.
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)
        if bars:
            datasets.enable_progress_bars()


def check_models(names: Sequence[str]) -> None:
    """lm-eval's HFLM wraps transformers models: a GGUF file (scored through llama.cpp) cannot run it."""
    for name in names:
        if Path(name).suffix == ".gguf":
            raise InputFormatError(
                f"model '{name}' is GGUF; --lm-eval runs on Hugging Face model directories: "
                "pass the directory it was exported from, or drop --lm-eval"
            )


# --- specs → task configs ----------------------------------------------------------------------


def _is_path(spec: str) -> bool:
    return spec.endswith(YAML_SUFFIXES) or "/" in spec or "\\" in spec or Path(spec).exists()


def _localize(files, folder: Path, task: str, yaml_path: Path):
    """``data_files`` (a path, a list, or split → path(s)) with relative paths made absolute."""
    if isinstance(files, dict):
        return {split: _localize(f, folder, task, yaml_path) for split, f in files.items()}
    if isinstance(files, (list, tuple)):
        return [_localize(f, folder, task, yaml_path) for f in files]
    path = Path(str(files)).expanduser()
    path = path if path.is_absolute() else folder / path
    if not re.search(r"[*?\[]", str(path)) and not path.is_file():  # globs are left to datasets
        raise InputFormatError(
            f"lm-eval task '{task}' ({yaml_path}): data file {path} not found; "
            "fix data_files in the YAML (relative paths start at the YAML's folder)"
        )
    return str(path)


def _task_config(yaml_path: Path, explicit: bool) -> dict | None:
    """The full config of a task YAML (includes and !function resolved, data paths absolute).

    None for a file that is not a task (a group, an include-only base) inside a directory.
    """
    # lm-eval's own loader: it resolves `include:` and `!function` the way lm-eval does.
    from lm_eval.tasks._yaml_loader import load_yaml

    try:
        cfg = load_yaml(yaml_path, resolve_func=True)
    except (OSError, ValueError, ImportError, AttributeError, TypeError, yaml.YAMLError) as exc:
        raise ConfigError(f"lm-eval task YAML {yaml_path} does not load: {exc}".replace("\n", " ")) from exc
    if not isinstance(cfg.get("task"), str) or "class" in cfg:
        if explicit:
            raise ConfigError(
                f"{yaml_path} is not an lm-eval task YAML (it needs a 'task: NAME' key); "
                "for a group, pass its task YAMLs or the group's registry name"
            )
        return None
    folder, task = yaml_path.parent, cfg["task"]
    kwargs = dict(cfg.get("dataset_kwargs") or {})
    path = cfg.get("dataset_path")
    if path in LOCAL_BUILDERS and "data_files" in kwargs:
        kwargs["data_files"] = _localize(kwargs["data_files"], folder, task, yaml_path)
    elif isinstance(path, str) and not Path(path).is_absolute() and (folder / path).is_dir():
        cfg["dataset_path"] = str(folder / path)  # a dataset folder beside the YAML (its data_files are inside it)
    return {**cfg, "dataset_kwargs": kwargs} if kwargs else cfg


def _yaml_configs(spec: str) -> list[dict]:
    path = Path(spec).expanduser()
    if path.is_file():
        return [_task_config(path.resolve(), explicit=True)]
    if path.is_dir():
        configs = [c for p in sorted(path.rglob("*.yaml")) if (c := _task_config(p.resolve(), explicit=False))]
        if not configs:
            raise InputFormatError(f"--lm-eval directory {path} holds no lm-eval task YAML (*.yaml with a 'task:' key)")
        return configs
    raise InputFormatError(
        f"lm-eval task YAML {path} not found; give an existing task YAML, a directory of them, or a task name"
    )


def _check_names(manager, names: Sequence[str]) -> None:
    known = set(manager.all_tasks)
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, manager.all_tasks, n=3)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise ConfigError(
                f"lm-eval task '{name}' is neither in lm-eval's registry nor a YAML file; {hint}"
                "see `lm-eval ls tasks`, or pass a task YAML"
            )


def _hub_dataset(exc: Exception, cfg: dict | None, manager, name: str) -> str:
    found = re.search(r"reach '([^']+)'", str(exc))
    if found:
        return found.group(1)
    if cfg is None and name in manager.task_index and manager.task_index[name].cfg:
        cfg = manager.task_index[name].cfg
    return str((cfg or {}).get("dataset_path", "?"))


def _load(manager, spec: str, item, cfg: dict | None) -> dict:
    """One ``TaskManager.load`` call, with lm-eval's and datasets' failures turned into one line."""
    from jinja2 import (
        TemplateError,  # lm-eval's prompt templates (doc_to_text, ...) are Jinja
    )

    name = cfg["task"] if cfg else spec
    where = f" ({spec})" if cfg else ""
    try:
        return manager.load([item])
    except ConnectionError as exc:  # datasets: "Couldn't reach 'org/name' on the Hub (OfflineModeIsEnabled)"
        raise InputFormatError(
            f"lm-eval task '{name}'{where} needs the Hub dataset '{_hub_dataset(exc, cfg, manager, name)}', "
            f"unreachable offline: {LOCAL_DATA_FIX}"
        ) from exc
    except FileNotFoundError as exc:  # datasets: no such dataset, or a glob that matched nothing
        raise InputFormatError(
            f"lm-eval task '{name}'{where}: dataset not found ({exc}); {LOCAL_DATA_FIX}".replace("\n", " ")
        ) from exc
    except (KeyError, ValueError, TypeError, IndexError, TemplateError) as exc:  # the config does not fit its data
        raise ConfigError(
            f"lm-eval task '{name}'{where} does not build: {type(exc).__name__}: {exc}; "
            "check its YAML against lm-eval's task guide".replace("\n", " ")
        ) from exc


def load_tasks(specs: Sequence[str], progress: bool = False) -> LmEvalTasks:
    """Build the tasks of ``specs`` (names, YAML files, directories) and read their datasets."""
    _require()
    from lm_eval.tasks import TaskManager

    names = [s for s in specs if not _is_path(s)]
    loaded: dict[str, dict] = {"tasks": {}, "groups": {}, "group_map": {}}
    sources: dict[str, str] = {}
    with _quiet(not progress):
        # Indexing lm-eval's own ~15k task YAMLs takes seconds: only done when a name needs it.
        manager = TaskManager(include_defaults=bool(names))
        _check_names(manager, names)
        items = [(s, c) for s in specs for c in (_yaml_configs(s) if _is_path(s) else [None])]
        for spec, cfg in items:
            part = _load(manager, spec, cfg if cfg else spec, cfg)
            for kind in ("tasks", "groups"):
                for name, obj in part[kind].items():
                    if name in sources:
                        raise ConfigError(
                            f"lm-eval task '{name}' comes from both {sources[name]} and {spec}; give it once"
                        )
                    sources[name] = spec
                    loaded[kind][name] = obj
            loaded["group_map"].update(part.get("group_map", {}))
    pinned = frozenset(n for n, t in loaded["tasks"].items() if t.get_config("num_fewshot") == 0)
    return LmEvalTasks(loaded, sources, pinned)


# --- running and reading back ------------------------------------------------------------------


def _set_fewshot(tasks: LmEvalTasks, fewshot: int) -> None:
    """``fewshot`` for every task, except where a task's YAML pins 0 (lm-eval's own rule)."""
    for name, task in tasks.loaded["tasks"].items():
        task.set_config(key="num_fewshot", value=0 if name in tasks.zero_shot else fewshot)
        task.set_fewshot_seed(seed=FEWSHOT_SEED)


def run(
    loaded_model,
    tasks: LmEvalTasks,
    *,
    fewshot: int,
    batch_size: int,
    context: int,
    limit: int | None = None,
    progress: bool = False,
    log_samples: bool = False,
) -> dict:
    """lm-eval's raw results dict for one model (``samples`` too with ``log_samples``)."""
    lm_eval = _require()
    from lm_eval.models.huggingface import HFLM

    with _quiet(not progress):
        # The loaded model and tokenizer as they are (dtype and device already applied);
        # float32 log-softmax as in mergesmith's own scoring; context caps the input like --context.
        lm = HFLM(
            pretrained=loaded_model.model,
            tokenizer=loaded_model.tokenizer,
            batch_size=batch_size,
            max_length=context,
            softmax_dtype="float32",
        )
        _set_fewshot(tasks, fewshot)
        return lm_eval.evaluator.evaluate(
            lm=lm, task_dict=tasks.loaded, limit=limit, bootstrap_iters=BOOTSTRAP_ITERS, log_samples=log_samples
        )


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def scores(raw: dict, sources: dict[str, str]) -> tuple[LmEvalScore, ...]:
    """Every numeric metric of lm-eval's ``results`` (keys ``metric,filter``), its stderr folded in."""
    out = []
    for task, metrics in raw["results"].items():
        samples = raw.get("n-samples", {}).get(task)
        for key, value in metrics.items():
            metric, comma, filt = key.partition(",")
            if not comma or metric.endswith("_stderr") or (number := _number(value)) is None:
                continue  # alias, name, sample_len; stderr rides with its metric
            stderr = _number(metrics.get(f"{metric}_stderr,{filt}"))
            out.append(
                LmEvalScore(
                    task=task,
                    source=sources.get(task, task),
                    metric=metric,
                    filter=filt,
                    value=number,
                    stderr=stderr if stderr is not None and math.isfinite(stderr) else None,
                    items=None if samples is None else int(samples["effective"]),
                    fewshot=raw.get("n-shot", {}).get(task) if samples is not None else None,
                )
            )
    return tuple(out)


def score_model(loaded_model, tasks: LmEvalTasks, **options) -> tuple[LmEvalScore, ...]:
    return scores(run(loaded_model, tasks, **options), tasks.sources)
