"""Frozen evaluation results, their JSON form, the ranking and the rows of a model card.

No torch here: ``mergesmith card`` reads results written by ``mergesmith eval --json``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, is_dataclass
from dataclasses import fields as dataclass_fields
from pathlib import Path

from mergesmith.errors import InputFormatError
from mergesmith.io.staging import replace_text

FORMAT = "mergesmith-eval/1"


@dataclass(frozen=True)
class KLScore:
    ref: str
    mean: float  # mean over tokens of KL(ref || model), nats
    p90: float
    p99: float
    top1: float  # share of tokens where both models' most likely next token agree
    delta_ppl: float  # ppl(model) - ppl(ref) on the same tokens


@dataclass(frozen=True)
class TextScore:
    text: str
    path: str
    tokens: int  # scored tokens
    bytes: int  # UTF-8 bytes they cover
    nll: float  # mean negative log-likelihood, nats per token
    ppl: float
    bits_per_byte: float
    kl: KLScore | None = None


@dataclass(frozen=True)
class TaskScore:
    task: str
    path: str
    items: int
    fewshot: int
    acc: float
    acc_stderr: float  # sqrt(acc (1 - acc) / items)
    acc_norm: float  # choice log-likelihood divided by its UTF-8 bytes
    chance: float  # mean of 1 / number of choices


@dataclass(frozen=True)
class LmEvalScore:
    """One metric of one lm-eval task or group, as lm-eval reported it (``acc,none`` → metric acc)."""

    task: str
    source: str  # the --lm-eval argument it came from: a registry name or a YAML path
    metric: str  # acc, acc_norm, exact_match, ...
    filter: str  # lm-eval's filter name; "none" for log-likelihood tasks
    value: float
    stderr: float | None  # None where lm-eval gives none ("N/A")
    items: int | None  # documents scored; None for a group
    fewshot: int | None  # None for a group

    @property
    def name(self) -> str:
        suffix = "" if self.filter == "none" else f",{self.filter}"
        return f"lm-eval:{self.task}/{self.metric}{suffix}"


@dataclass(frozen=True)
class ModelScore:
    model: str
    texts: tuple[TextScore, ...]
    tasks: tuple[TaskScore, ...]
    seconds: float
    is_ref: bool = False
    lm_eval: tuple[LmEvalScore, ...] = ()

    def accuracies(self) -> list[float]:
        """Our tasks' acc, then lm-eval's unfiltered acc of each task: what ranking by accuracy averages."""
        return [t.acc for t in self.tasks] + [s.value for s in self.lm_eval if s.metric == "acc" and s.filter == "none"]

    def rank_key(self) -> tuple:
        """Lower is better: mean bits per byte over texts (tokenizer-independent), else -mean accuracy."""
        if self.texts:
            return (sum(t.bits_per_byte for t in self.texts) / len(self.texts),)
        if accs := self.accuracies():
            return (-sum(accs) / len(accs),)
        return (0.0,)


@dataclass(frozen=True)
class EvalResult:
    models: tuple[ModelScore, ...]
    ref: str | None
    context: int
    stride: int
    dtype: str
    date: str  # ISO date of the run
    limit: int | None = None

    def ranked(self) -> tuple[ModelScore, ...]:
        return tuple(sorted(self.models, key=ModelScore.rank_key))  # stable: ties keep input order

    def model(self, name: str) -> ModelScore:
        for score in self.models:
            if score.model == name:
                return score
        raise InputFormatError(f"no results for model '{name}'; results hold {', '.join(m.model for m in self.models)}")

    def to_dict(self) -> dict:
        return {"format": FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict) -> EvalResult:
        fields = dict(data)
        fields.pop("format", None)
        models = tuple(
            ModelScore(
                model=m["model"],
                seconds=m["seconds"],
                is_ref=m.get("is_ref", False),
                texts=tuple(TextScore(**{**t, "kl": KLScore(**t["kl"]) if t.get("kl") else None}) for t in m["texts"]),
                tasks=tuple(TaskScore(**t) for t in m["tasks"]),
                lm_eval=tuple(LmEvalScore(**s) for s in m.get("lm_eval", ())),  # absent in older files
            )
            for m in fields.pop("models")
        )
        return cls(models=models, **fields)


def check_results_path(path) -> Path:
    """Where ``save_results`` will write, checked before any model is scored (so no run is lost at the end)."""
    path = Path(path)
    if path.is_dir():
        raise InputFormatError(
            f"results path {path} (--json) is a directory; give a file name such as {path / 'results.json'}"
        )
    if not path.parent.is_dir():
        raise InputFormatError(
            f"results path {path} (--json): folder {path.parent} does not exist; create it or choose another path"
        )
    return path


def save_results(result: EvalResult, path) -> None:
    replace_text(check_results_path(path), json.dumps(result.to_dict(), indent=2) + "\n")


def load_results(path) -> EvalResult:
    path = Path(path)
    if not path.is_file():
        raise InputFormatError(f"results file {path} not found; write one with `mergesmith eval ... --json {path}`")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise InputFormatError(
            f"results file {path} is not valid JSON ({exc}); write it with `mergesmith eval --json`"
        ) from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InputFormatError(
            f'results file {path} is not a mergesmith eval result (want "format": "{FORMAT}"); write it with `mergesmith eval --json`'
        )
    try:
        result = EvalResult.from_dict(data)
    except (KeyError, TypeError, AttributeError) as exc:
        raise InputFormatError(
            f"results file {path} is malformed ({exc!r}); write it again with `mergesmith eval --json`"
        ) from None
    _check_numbers(result, path)
    return result


def _check_numbers(obj, path: Path) -> None:
    """Numeric fields hold numbers: a hand-edited ``"ppl": "low"`` fails here, not in the card's formatting."""
    for f in dataclass_fields(obj):
        value = getattr(obj, f.name)
        for item in value if isinstance(value, tuple) else (value,):
            if is_dataclass(item):
                _check_numbers(item, path)
        numeric = f.type.split(" | ")[0] in ("float", "int")  # annotations are strings here (PEP 563)
        optional_none = value is None and "None" in f.type
        if numeric and not optional_none and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise InputFormatError(
                f"results file {path}: {type(obj).__name__} field '{f.name}' is {value!r}, not a number; "
                "write it again with `mergesmith eval --json`"
            )


def metric_rows(score: ModelScore) -> list[tuple[str, str]]:
    """(metric, value) rows of one model, as the model card shows them."""
    rows: list[tuple[str, str]] = []
    for t in score.texts:
        rows.append((f"perplexity ({t.text})", f"{t.ppl:.4f}"))
        rows.append((f"bits per byte ({t.text})", f"{t.bits_per_byte:.4f}"))
        if t.kl is not None:
            rows.append(
                (f"KL vs {t.kl.ref} ({t.text}): mean / p90 / p99", f"{t.kl.mean:.4g} / {t.kl.p90:.4g} / {t.kl.p99:.4g}")
            )
            rows.append((f"top-1 agreement with {t.kl.ref} ({t.text})", f"{t.kl.top1:.4f}"))
            rows.append((f"Δ perplexity vs {t.kl.ref} ({t.text})", f"{t.kl.delta_ppl:+.4f}"))
    for t in score.tasks:
        rows.append((f"accuracy ({t.task}, {t.fewshot}-shot)", f"{t.acc:.4f} ± {t.acc_stderr:.4f}"))
        rows.append((f"length-normalized accuracy ({t.task}, {t.fewshot}-shot)", f"{t.acc_norm:.4f}"))
    for s in score.lm_eval:
        shots = "" if s.fewshot is None else f" ({s.fewshot}-shot)"
        rows.append((s.name + shots, f"{s.value:.4f}" + ("" if s.stderr is None else f" ± {s.stderr:.4f}")))
    return rows


def datasets_line(score: ModelScore) -> str:
    texts = [f"{t.text} ({t.tokens} tokens)" for t in score.texts]
    tasks = [f"{t.task} ({t.items} items, chance {t.chance:.3f})" for t in score.tasks]
    lm_items = {s.task: s.items for s in score.lm_eval}  # one entry per lm-eval task, not per metric
    lm_tasks = [f"lm-eval:{task}" + ("" if n is None else f" ({n} items)") for task, n in lm_items.items()]
    return ", ".join(texts + tasks + lm_tasks)
