"""``evaluate``: score models on texts (perplexity, bits per byte, KL vs a reference) and tasks.

Everything is checked (files parse, models exist, options make sense) before a model loads.
The reference, when given, is scored first as the baseline row, then kept loaded beside each
model so that KL is computed on the very same windows.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import date
from pathlib import Path

from mergesmith.errors import ArchitectureError, ConfigError, InputFormatError
from mergesmith.eval import choice, data, lmeval, perplexity
from mergesmith.eval.models import (
    LoadedModel,
    check_device,
    check_model_dir,
    check_same_tokenizer,
    load_model,
    max_positions,
    torch_dtype,
)
from mergesmith.eval.results import EvalResult, ModelScore, TaskScore, TextScore

DEFAULT_CONTEXT = 1024
DEFAULT_BATCH_SIZE = 4


def _inputs(texts, tasks, lm_eval) -> tuple[list[data.Text], list[data.Task]]:
    if texts is None and tasks is None and not lm_eval:  # nothing asked for: the bundled held-out texts and tasks
        texts, tasks = data.bundled_texts(), data.bundled_tasks()
        if not texts and not tasks:
            raise InputFormatError(
                f"no bundled evaluation data in {data.DATA_DIR}; give text files (texts, --text) or task files (tasks, --tasks)"
            )
    if not texts and not tasks and not lm_eval:
        raise ConfigError("nothing to evaluate: both texts and tasks are empty; pass text files or tasks")
    return [data.read_text(t) for t in texts or ()], [data.read_task(t) for t in tasks or ()]


def _window(context: int | None, stride: int | None, names: Sequence[str]) -> tuple[int, int]:
    """Context defaults to min(1024, the smallest max_position_embeddings); stride to context / 2."""
    limits = [(n, p) for n in names if (p := max_positions(n)) is not None]
    if context is None:
        context = min([DEFAULT_CONTEXT] + [p for _, p in limits])
    for name, positions in limits:
        if context > positions:
            raise ConfigError(
                f"context {context} is longer than model '{name}' handles (max_position_embeddings {positions}); set context (--context) to {positions} or less"
            )
    stride = max(1, context // 2) if stride is None else stride
    perplexity.windows(2, context, stride)  # checks the pair
    return context, stride


def _check_counts(batch_size: int, fewshot: int, limit: int | None) -> None:
    for flag, value, low in (("--batch-size", batch_size, 1), ("--fewshot", fewshot, 0), ("--limit", limit, 1)):
        if value is not None and value < low:
            raise ConfigError(f"{flag} {value} is out of range; it must be at least {low}")


def _bar(progress: bool, total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="step", disable=not progress, leave=False)


def _text(loaded: LoadedModel, ref: LoadedModel | None, text: data.Text, opts: dict, progress: bool) -> TextScore:
    ids = perplexity.token_ids(loaded, text.text)
    if ref is not None and not perplexity.token_ids(ref, text.text).equal(ids):
        raise ArchitectureError(
            f"models '{loaded.name}' and '{ref.name}' tokenize {text.path} differently; KL divergence needs identical token ids: drop --ref"
        )
    total = len(perplexity.windows(len(ids), opts["context"], opts["stride"])[: opts["limit"]])
    with _bar(progress, total, f"{Path(loaded.name).name}: {text.name}") as bar:
        sums = perplexity.score_ids(loaded, ids, ref=ref, on_window=bar.update, **opts)
    return perplexity.text_score(text.name, text.path, text.text, ids, sums, loaded, None if ref is None else ref.name)


def _task(loaded: LoadedModel, task: data.Task, opts: dict, fewshot: int, progress: bool) -> TaskScore:
    total = sum(len(item.choices) for item in task.items[: opts["limit"]])
    with _bar(progress, total, f"{Path(loaded.name).name}: {task.name}") as bar:
        return choice.score_task(loaded, task, fewshot=fewshot, on_step=bar.update, **opts)


def evaluate(
    models: Sequence,
    *,
    ref=None,
    texts: Sequence | None = None,
    tasks: Sequence | None = None,
    context: int | None = None,
    stride: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    fewshot: int = 0,
    dtype: str = "float32",
    device: str = "cpu",
    limit: int | None = None,
    progress: bool = False,
    lm_eval: Sequence[str] | None = None,
    trust_remote_code: bool = False,
) -> EvalResult:
    """Score ``models`` (Hugging Face directories); with no ``texts``, ``tasks`` or ``lm_eval``, the bundled sets.

    ``tasks`` are JSONL files or bundled task names; ``lm_eval`` are lm-eval-harness task names,
    task YAMLs or directories of them (needs the ``lmeval`` extra); ``limit`` caps windows per
    text and items per task (quick checks). The reference, if any, is the first row, marked ``is_ref``.
    ``trust_remote_code`` runs the code a model ships with (config.json ``auto_map``) to load it.
    """
    ref = None if ref is None else str(ref)
    names = [ref] if ref else []
    for m in map(str, models):
        if all(Path(m).resolve() != Path(n).resolve() for n in names):
            names.append(m)
    if not names:
        raise ConfigError("no model to evaluate; pass at least one model directory")
    for name in names:
        check_model_dir(name)
    torch_dtype(dtype)
    check_device(device)
    _check_counts(batch_size, fewshot, limit)
    text_list, task_list = _inputs(texts, tasks, lm_eval)
    context, stride = _window(context, stride, names)
    if lm_eval:
        lmeval.check_models(names)
    lm_tasks = lmeval.load_tasks([str(s) for s in lm_eval], progress) if lm_eval else None  # datasets read here
    text_opts = {"context": context, "stride": stride, "batch_size": batch_size, "limit": limit}
    task_opts = {"context": context, "batch_size": batch_size, "limit": limit}

    scores, ref_loaded = [], None
    for name in names:  # the reference, if any, comes first and stays loaded
        start = time.perf_counter()
        is_ref = name == ref
        loaded = load_model(name, dtype, device, progress, trust_remote_code)
        ref_loaded = loaded if is_ref else ref_loaded
        kl_ref = None if is_ref else ref_loaded
        if kl_ref is not None:
            check_same_tokenizer(loaded, kl_ref)
        text_scores = tuple(_text(loaded, kl_ref, t, text_opts, progress) for t in text_list)
        task_scores = tuple(_task(loaded, t, task_opts, fewshot, progress) for t in task_list)
        lm_scores = (
            ()
            if lm_tasks is None
            else lmeval.score_model(loaded, lm_tasks, fewshot=fewshot, **task_opts, progress=progress)
        )
        scores.append(ModelScore(name, text_scores, task_scores, time.perf_counter() - start, is_ref, lm_scores))
        del loaded  # one candidate in memory at a time (beside the reference)
    return EvalResult(tuple(scores), ref, context, stride, dtype, date.today().isoformat(), limit)
