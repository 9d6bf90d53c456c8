"""Multiple choice by log-likelihood: the choice the model finds most likely after the prompt wins.

    score(c)      = sum_j log p(c_j | prompt, c_<j)                      → acc
    score_norm(c) = score(c) / bytes(" " + c)                            → acc_norm

Every (item, choice) sequence is ``prompt tokens + choice tokens`` (tokenized apart, so the
prompt's tokens are the same for all choices), batched right-padded under an attention mask.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from mergesmith.eval.data import Task, continuation, prompt
from mergesmith.eval.models import LoadedModel
from mergesmith.eval.results import TaskScore


@dataclass(frozen=True)
class _Sequence:
    item: int
    choice: int
    ids: tuple[int, ...]
    n_choice: int  # the last n_choice ids are the choice


def _sequences(loaded: LoadedModel, task: Task, fewshot: int, context: int, limit: int | None) -> list[_Sequence]:
    tok = loaded.tokenizer
    out = []
    for i, item in enumerate(task.items[:limit]):
        ctx = tok(prompt(task, i, fewshot), add_special_tokens=True)["input_ids"]
        for j, choice in enumerate(item.choices):
            cont = tok(continuation(choice), add_special_tokens=False)["input_ids"]
            ids = (list(ctx) + list(cont))[-context:]  # keep the end: the choice must stay whole
            out.append(_Sequence(i, j, tuple(ids), min(len(cont), len(ids) - 1)))
    return out


def _batches(seqs: list[_Sequence], token_budget: int) -> list[list[_Sequence]]:
    """Length-sorted groups whose padded size (rows × longest) stays within ``token_budget``."""
    order = sorted(seqs, key=lambda s: len(s.ids))
    groups, group = [], []
    for s in order:
        if group and (len(group) + 1) * len(s.ids) > token_budget:
            groups.append(group)
            group = []
        group.append(s)
    return groups + ([group] if group else [])


def _loglikelihoods(loaded: LoadedModel, group: list[_Sequence], pad_id: int) -> list[float]:
    width = max(len(s.ids) for s in group)
    ids = torch.full((len(group), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(group), width), dtype=torch.long)
    for row, s in enumerate(group):
        ids[row, : len(s.ids)] = torch.tensor(s.ids)
        mask[row, : len(s.ids)] = 1
    logits = loaded.model(
        input_ids=ids.to(loaded.device), attention_mask=mask.to(loaded.device), use_cache=False
    ).logits
    out = []
    for row, s in enumerate(group):
        end = len(s.ids)
        lp = torch.log_softmax(logits[row, end - s.n_choice - 1 : end - 1].float(), dim=-1)
        target = ids[row, end - s.n_choice : end].to(lp.device).unsqueeze(-1)
        out.append(float(lp.gather(-1, target).double().sum()))
    return out


def score_task(
    loaded: LoadedModel,
    task: Task,
    *,
    fewshot: int,
    context: int,
    batch_size: int,
    limit: int | None = None,
    on_step: Callable[[int], None] | None = None,
) -> TaskScore:
    seqs = _sequences(loaded, task, fewshot, context, limit)
    tok = loaded.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    loglik: dict[tuple[int, int], float] = {}
    with torch.no_grad():
        for group in _batches(seqs, batch_size * context):
            for s, value in zip(group, _loglikelihoods(loaded, group, pad_id)):
                loglik[(s.item, s.choice)] = value
            if on_step:
                on_step(len(group))
    items = task.items[:limit]
    hits = hits_norm = 0
    for i, item in enumerate(items):
        scores = [loglik[(i, j)] for j in range(len(item.choices))]
        norm = [v / len(continuation(c).encode("utf-8")) for v, c in zip(scores, item.choices)]
        hits += max(range(len(scores)), key=scores.__getitem__) == item.answer
        hits_norm += max(range(len(norm)), key=norm.__getitem__) == item.answer
    n = len(items)
    acc = hits / n
    return TaskScore(
        task=task.name,
        path=task.path,
        items=n,
        fewshot=fewshot,
        acc=acc,
        acc_stderr=math.sqrt(acc * (1 - acc) / n),
        acc_norm=hits_norm / n,
        chance=sum(1 / len(item.choices) for item in items) / n,
    )
