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
    if len(Path(name).parts) == 1:
        candidates.append(DATA_DIR / "text" / f"{name}.txt")
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
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
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError) as exc:
            raise InputFormatError(f"calibration text {path} cannot be read as UTF-8 ({exc}); re-encode it") from None
        texts.append(CalibrationText(name, path, text))
    return texts


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
        raise InputFormatError(f"model '{model}': cannot load its tokenizer from {tokenizer_dir} ({exc})") from None


def token_ids(tokenizer, texts: Sequence[CalibrationText], tokens: int, model: str) -> list[int]:
    """The first ``tokens / len(texts)`` tokens of each text (the remainder from the first texts)."""
    ids: list[int] = []
    for k, text in enumerate(texts):
        share = tokens // len(texts) + (k < tokens % len(texts))
        own = tokenizer(text.text, add_special_tokens=False)["input_ids"]
        if len(own) < share:
            raise InputFormatError(
                f"model '{model}': calibration text {text.path} has {len(own)} tokens, fewer than the {share} "
                f"it must give (calibration_tokens {tokens} over {len(texts)} text(s)); give a longer text "
                "or lower calibration_tokens"
            )
        ids += own[:share]
    return ids


def windows(ids: Sequence[int]) -> list[list[int]]:
    return [list(ids[i : i + WINDOW]) for i in range(0, len(ids), WINDOW)]
