"""Evaluation inputs: text files, multiple-choice task files (JSONL), the bundled sets in ``data/``.

A task file holds one JSON object per line: ``{"question": str, "choices": [str, ...],
"answer": int}`` (``answer`` indexes ``choices``). Prompts are built as

    Question: {question}\\nAnswer:{" " + choice}

with ``fewshot`` solved examples (the other items of the same file, in a seeded order) before
it, separated by a blank line. Nothing here touches torch.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from mergesmith.errors import InputFormatError

# The repository's data/ folder: mergesmith/eval/data.py → ../../data
DATA_DIR = Path(__file__).resolve().parents[2] / "data"
HELDOUT_SUFFIX = "_heldout.txt"


@dataclass(frozen=True)
class Text:
    name: str  # file stem, e.g. "austen_heldout"
    path: str
    text: str


@dataclass(frozen=True)
class Item:
    question: str
    choices: tuple[str, ...]
    answer: int


@dataclass(frozen=True)
class Task:
    name: str
    path: str
    items: tuple[Item, ...]


def bundled_texts(data_dir: Path = DATA_DIR) -> list[Path]:
    """The held-out texts that ship in ``data/text`` (the default of ``mergesmith eval``)."""
    return sorted((data_dir / "text").glob(f"*{HELDOUT_SUFFIX}"))


def bundled_tasks(data_dir: Path = DATA_DIR) -> list[Path]:
    return sorted((data_dir / "tasks").glob("*.jsonl"))


def bundled_text_names(data_dir: Path = DATA_DIR) -> list[str]:
    """Every text in ``data/text`` by name (``kjv_heldout``), as ``--text``, ``--tasks`` and search files take them."""
    return sorted(p.stem for p in (data_dir / "text").glob("*.txt"))


def _read_utf8(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputFormatError(
            f"{what} {path} is not UTF-8 ({exc.reason} at byte {exc.start}); re-encode it as UTF-8"
        ) from None
    except OSError as exc:
        raise InputFormatError(f"{what} {path} cannot be read ({exc.strerror}); check its permissions") from None


def read_text(path, data_dir: Path = DATA_DIR) -> Text:
    """A UTF-8 text file, or a bundled text by name (``kjv_heldout``) where no such file exists."""
    path = Path(path)
    if path.is_dir():
        raise InputFormatError(f"text file {path} is a directory; give the UTF-8 text files in it as texts (--text)")
    if not path.is_file() and len(path.parts) == 1 and (data_dir / "text" / f"{path}.txt").is_file():
        path = data_dir / "text" / f"{path}.txt"
    if not path.is_file():
        names = ", ".join(bundled_text_names(data_dir)) or "none found"
        raise InputFormatError(
            f"text file {path} not found; give an existing UTF-8 text file as a text (--text), or a bundled text name ({names})"
        )
    text = _read_utf8(path, "text file")
    if not text.strip():
        raise InputFormatError(f"text file {path} is empty; give a file with text to score")
    return Text(path.stem, str(path), text)


def resolve_task(name_or_path, data_dir: Path = DATA_DIR) -> Path:
    """A task file path, or the name of a bundled task (``general_knowledge``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    bundled = data_dir / "tasks" / f"{name_or_path}.jsonl"
    if bundled.is_file():
        return bundled
    names = ", ".join(p.stem for p in bundled_tasks(data_dir)) or "none found"
    raise InputFormatError(
        f"task '{name_or_path}' is neither a file nor a bundled task (bundled: {names}); pass a JSONL file or one of those names"
    )


def _parse_item(line: str, where: str) -> Item:
    try:
        obj = json.loads(line)
    except ValueError as exc:
        raise InputFormatError(f"{where}: not valid JSON ({exc}); each line must be one JSON object") from exc
    if not isinstance(obj, dict) or set(obj) != {"question", "choices", "answer"}:
        keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise InputFormatError(f"{where}: has {keys}; each line needs exactly the keys answer, choices, question")
    question, choices, answer = obj["question"], obj["choices"], obj["answer"]
    if (
        not isinstance(question, str)
        or not isinstance(choices, list)
        or len(choices) < 2
        or not all(isinstance(c, str) and c for c in choices)
    ):
        raise InputFormatError(
            f"{where}: 'question' must be a string and 'choices' a list of at least 2 non-empty strings"
        )
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
        raise InputFormatError(
            f"{where}: 'answer' is {answer!r}; it must be an index into choices (0..{len(choices) - 1})"
        )
    return Item(question, tuple(choices), answer)


def read_task(name_or_path, data_dir: Path = DATA_DIR) -> Task:
    path = resolve_task(name_or_path, data_dir)
    lines = _read_utf8(path, "task file").splitlines()
    items = tuple(_parse_item(line, f"task file {path} line {i}") for i, line in enumerate(lines, 1) if line.strip())
    if not items:
        raise InputFormatError(f"task file {path} has no items; write one JSON object per line")
    return Task(path.stem, str(path), items)


def format_question(question: str) -> str:
    return f"Question: {question}\nAnswer:"


def continuation(choice: str) -> str:
    return " " + choice


def fewshot_prefix(task: Task, index: int, fewshot: int, seed: int = 0) -> str:
    """``fewshot`` solved items other than ``index``, in an order fixed by ``(seed, index)``."""
    if fewshot <= 0:
        return ""
    others = [i for i in range(len(task.items)) if i != index]
    chosen = random.Random(seed * 1_000_003 + index).sample(others, min(fewshot, len(others)))
    shots = [task.items[i] for i in chosen]
    return "".join(format_question(s.question) + continuation(s.choices[s.answer]) + "\n\n" for s in shots)


def prompt(task: Task, index: int, fewshot: int = 0, seed: int = 0) -> str:
    """The context that every choice of item ``index`` is scored after."""
    return fewshot_prefix(task, index, fewshot, seed) + format_question(task.items[index].question)
