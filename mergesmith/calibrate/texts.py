"""Calibration text: files named by a recipe (or bundled texts by name), cut into token windows.

A name is a path relative to the recipe's folder, else to the working directory, else a text
bundled in the repository's ``data/text`` (``kjv_train``), the rule ``mergesmith eval`` uses for
``--text``. ``calibration_tokens`` are split evenly over a model's texts (the first tokens of each,
tokenized by that model's own tokenizer without special tokens) and cut into consecutive windows
of ``WINDOW`` tokens (the last may be shorter).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mergesmith.errors import InputFormatError

# The repository's data/ folder: mergesmith/calibrate/texts.py → ../../data
DATA_DIR = Path(__file__).resolve().parents[2] / "data"
WINDOW = 256  # tokens per forward pass of the calibration stage
MARGIN = 64  # tokens tokenized past the last one kept, so that cutting the text cannot change it


@dataclass(frozen=True)
class CalibrationText:
    name: str  # as the recipe wrote it
    path: Path
    text: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


def resolve_text(name: str, base_dir: Path | None, model: str) -> Path:
    candidates = [Path(name).expanduser()]
    if base_dir is not None and not candidates[0].is_absolute():
        candidates.insert(0, base_dir / candidates[0])
    if len(Path(name).parts) == 1:  # a bundled text, named with or without its .txt
        candidates.append(DATA_DIR / "text" / (name if name.endswith(".txt") else f"{name}.txt"))
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
        if candidate.exists():
            raise InputFormatError(
                f"model '{model}': calibration text '{name}' is {candidate}, which is not a file; "
                "give a UTF-8 text file (a list of files for several)"
            )
    bundled = ", ".join(sorted(p.stem for p in (DATA_DIR / "text").glob("*.txt"))) or "none found"
    raise InputFormatError(
        f"model '{model}': calibration text '{name}' not found (looked in {', '.join(map(str, candidates))}); "
        f"give a UTF-8 text file (relative to the recipe) or a bundled text name ({bundled})"
    )


def read_texts(names: Sequence[str], base_dir: Path | None, model: str) -> list[CalibrationText]:
    texts = []
    for name in names:
        path = resolve_text(name, base_dir, model)
        try:
            text = path.read_text(encoding="utf-8-sig")  # a byte-order mark is no text
        except UnicodeDecodeError as exc:
            raise InputFormatError(
                f"model '{model}': calibration text {path} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                "give a text file, re-encoded as UTF-8"
            ) from None
        except OSError as exc:
            raise InputFormatError(
                f"model '{model}': calibration text {path} cannot be read ({exc.strerror}); check its permissions"
            ) from None
        _check_text(text, path, model)
        texts.append(CalibrationText(name, path, text))
    return texts


def _check_text(text: str, path: Path, model: str) -> None:
    """Refuse what is no text: nothing but whitespace, or NUL bytes (valid UTF-8, but binary data)."""
    if not text.strip():
        raise InputFormatError(f"model '{model}': calibration text {path} is empty; give a file with text in it")
    if "\x00" in text:
        raise InputFormatError(
            f"model '{model}': calibration text {path} holds NUL bytes at character {text.index(chr(0))}: "
            "binary data, not text; give a UTF-8 text file"
        )


def load_tokenizer(tokenizer_dir: Path | None, model: str):
    if tokenizer_dir is None:
        raise InputFormatError(
            f"model '{model}': calibration needs the model's tokenizer files; a GGUF input has none on disk: "
            "give the Hugging Face model directory"
        )
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(tokenizer_dir))
    except (OSError, ValueError) as exc:
        reason = str(exc).split(". ")[0]
        raise InputFormatError(
            f"model '{model}': cannot load its tokenizer from {tokenizer_dir} ({reason}); calibration reads each "
            "model's text with the model's own tokenizer: put its tokenizer files (tokenizer.json, "
            "tokenizer_config.json) beside its weights"
        ) from None


def token_ids(tokenizer, texts: Sequence[CalibrationText], tokens: int, model: str) -> list[int]:
    """The first ``tokens / len(texts)`` tokens of each text (the remainder from the first texts)."""
    ids: list[int] = []
    for k, text in enumerate(texts):
        share = tokens // len(texts) + (k < tokens % len(texts))
        own = first_tokens(tokenizer, text.text, share)
        if len(own) < share:
            raise InputFormatError(
                f"model '{model}': calibration text {text.path} has {len(own)} tokens, fewer than the {share} "
                f"it must give (calibration_tokens {tokens} over {len(texts)} text(s)); give a longer text "
                "or lower calibration_tokens"
            )
        ids += own[:share]
    return ids


def first_tokens(tokenizer, text: str, count: int) -> list[int]:
    """The tokens of a prefix of ``text`` that holds more than ``count`` + ``MARGIN`` of them (all of
    ``text`` where it holds fewer): a corpus of gigabytes is not tokenized whole for 4096 tokens.
    The tokens well before a cut are those of the whole text (tokenizers split words apart first)."""
    chars = max(4096, 8 * (count + MARGIN))
    while True:
        ids = tokenizer(text[:chars], add_special_tokens=False)["input_ids"]
        if chars >= len(text) or len(ids) > count + MARGIN:
            return ids
        chars *= 2


def windows(ids: Sequence[int]) -> list[list[int]]:
    return [list(ids[i : i + WINDOW]) for i in range(0, len(ids), WINDOW)]
