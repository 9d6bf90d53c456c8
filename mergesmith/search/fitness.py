"""Fitness: a weighted sum of `mergesmith eval` metrics on an in-memory model, lower is better.

    fitness = Σ_k w_k · term_k,   term = mean over texts of NLL (nats/token)
                                       | mean over texts of KL(ref || model) per token
                                       | 1 - accuracy on a multiple-choice task

Each text counts once in a mean, whatever its length. The metrics are `mergesmith.eval`'s own
(sliding windows, the same prompts); texts are tokenized once per worker, not per candidate.
Texts and tasks are read here, in the driver, and travel to the workers as data.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from mergesmith.errors import ConfigError
from mergesmith.eval import choice, perplexity
from mergesmith.eval.data import Task, Text, read_task, read_text
from mergesmith.eval.models import LoadedModel, check_same_tokenizer, load_model
from mergesmith.search.settings import Fitness, resolve_path, resolve_text

WINDOWS = "windows"  # details key: per-window sums of every text


@dataclass(frozen=True)
class ObjectiveTerm:
    metric: str  # nll | kl | accuracy
    weight: float
    texts: tuple[Text, ...] = ()
    ref: str | None = None  # reference model directory (kl)
    task: Task | None = None
    fewshot: int = 0

    @property
    def label(self) -> str:
        if self.metric == "accuracy":
            return f"error {self.task.name}"
        names = ",".join(t.name for t in self.texts)
        return f"nll {names}" if self.metric == "nll" else f"kl {names}"


@dataclass(frozen=True)
class Objective:
    terms: tuple[ObjectiveTerm, ...]
    context: int
    stride: int
    batch_size: int
    limit: int | None


def objective(fitness: Fitness, base_dir: Path, texts: dict[str, Text] | None = None) -> Objective:
    """The fitness as data; ``texts`` gives the text scored for a name (a split part) where it has one."""
    terms, given = [], texts or {}
    for term in fitness.terms:
        texts = tuple(given.get(t) or read_text(resolve_text(t, base_dir)) for t in (term.nll or term.kl or ()))
        ref = None if term.ref is None else str(resolve_path(term.ref, base_dir))
        task = None
        if term.accuracy is not None:
            local = base_dir / term.accuracy
            task = read_task(local if local.is_file() else term.accuracy)
        terms.append(ObjectiveTerm(term.metric, term.weight, texts, ref, task, term.fewshot))
    stride = fitness.stride if fitness.stride is not None else max(1, fitness.context // 2)
    perplexity.windows(2, fitness.context, stride)  # checks the pair before any model loads
    return Objective(tuple(terms), fitness.context, stride, fitness.batch_size, fitness.limit)


def nll_objective(texts: tuple[Text, ...], like: Objective, limit: int | None) -> Objective:
    """Mean NLL over ``texts`` with the windows of ``like``: the held-out report."""
    return Objective((ObjectiveTerm("nll", 1.0, texts),), like.context, like.stride, like.batch_size, limit)


def loaded(name: str, model, tokenizer) -> LoadedModel:
    keeps = "logits_to_keep" in inspect.signature(model.forward).parameters
    return LoadedModel(name, model, tokenizer, torch.device("cpu"), keeps)


class Scorer:
    """One worker's scoring state: token ids of every text, reference models, for one model object
    whose parameters change between calls."""

    def __init__(self, target: LoadedModel, obj: Objective):
        positions = getattr(target.model.config, "max_position_embeddings", None)
        if isinstance(positions, int) and obj.context > positions:
            raise ConfigError(
                f"fitness.context {obj.context} is longer than the model handles "
                f"(max_position_embeddings {positions}); set fitness.context to {positions} or less"
            )
        self.target, self.obj = target, obj
        self.refs: dict[str, LoadedModel] = {}
        for term in obj.terms:
            if term.ref is not None and term.ref not in self.refs:
                self.refs[term.ref] = load_model(term.ref)
                check_same_tokenizer(target, self.refs[term.ref])
        self.ids = {t.path: perplexity.token_ids(target, t.text) for term in obj.terms for t in term.texts}

    def _text(self, text: Text, ref: LoadedModel | None, skip: int, limit: int | None) -> list[list[float]]:
        """[nll sum, tokens, KL sum] of each window in ``[skip, limit)``."""
        o = self.obj
        sums = perplexity.score_ids(
            self.target,
            self.ids[text.path],
            context=o.context,
            stride=o.stride,
            batch_size=o.batch_size,
            ref=ref,
            limit=limit,
            skip=skip,
        )
        self.scored_tokens += sums.tokens
        kls = [float(k.sum()) for k in sums.kl] if ref is not None else [0.0] * len(sums.windows)  # no reference: no KL
        return [[nll, n, kl] for (nll, n), kl in zip(sums.windows, kls)]

    def _raw(self, skip: int, limit: int | None) -> dict[str, list]:
        """Per-window sums of windows ``[skip, limit)`` of every text term (key ``"k/i"``: term k, text i),
        and each accuracy term's error rate (key ``"k"``, scored with the first windows only)."""
        out: dict[str, list] = {}
        self.scored_tokens = 0
        for k, term in enumerate(self.obj.terms):
            if term.metric == "accuracy":
                if skip == 0:
                    o = self.obj
                    result = choice.score_task(
                        self.target,
                        term.task,
                        fewshot=term.fewshot,
                        context=o.context,
                        batch_size=o.batch_size,
                        limit=o.limit,
                    )
                    out[str(k)] = [1.0 - result.acc]
                continue
            ref = self.refs.get(term.ref) if term.ref else None
            for i, text in enumerate(term.texts):
                out[f"{k}/{i}"] = self._text(text, ref, skip, limit)
        return out

    def score(self, skip: int = 0, limit: int | None | str = "fitness") -> tuple[float, dict]:
        """(fitness, details) on windows ``[skip, limit)`` of every text (default: the objective's
        limit): the weighted sum and each term's value (per text for NLL), and under ``windows`` the
        per-window sums that racing and paired differences use. Past the first windows (``skip`` > 0)
        only the windows: their fitness needs the ones before (``combine``)."""
        raw = self._raw(skip, self.obj.limit if limit == "fitness" else limit)
        if skip:
            return math.nan, {WINDOWS: raw}
        fitness, details = combine(self.obj, raw)
        return fitness, {**details, WINDOWS: raw}


def combine(obj: Objective, raw: dict[str, list]) -> tuple[float, dict[str, float]]:
    """Fitness and term values from per-window sums (``Scorer.raw``, rungs concatenated)."""
    total, details = 0.0, {}
    for k, term in enumerate(obj.terms):
        if term.metric == "accuracy":
            value = raw[str(k)][0]
        else:
            column = 0 if term.metric == "nll" else 2
            values = []
            for i in range(len(term.texts)):
                windows = raw[f"{k}/{i}"]
                values.append(sum(w[column] for w in windows) / sum(w[1] for w in windows))
            value = sum(values) / len(values)
            if len(term.texts) > 1:
                details.update({f"{term.metric} {t.name}": v for t, v in zip(term.texts, values)})
        details[term.label] = value
        total += term.weight * value
    return total, details
