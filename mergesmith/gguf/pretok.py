"""llama.cpp's name for a BPE tokenizer's pre-tokenizer, read from its tokenizer.json.

llama.cpp's converter recognises a pre-tokenizer by hashing the tokens of one test string and
refuses hashes it has not seen: every tokenizer trained with the ``tokenizers`` library (and
every tokenizer rebuilt from a GGUF) has a new vocabulary, hence a new hash, even when it splits
text exactly like GPT-2 or Llama 3. Here the splitting rule itself is compared instead: the
``pre_tokenizer`` steps (byte-level regex, Split patterns, digit splitting) are matched against
the rules of llama.cpp pre-tokenizer types that implement them (``src/llama-vocab.cpp``).
"""

from __future__ import annotations

import json
from pathlib import Path

# Split patterns as tokenizer.json stores them (JSON-decoded).
GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_REGEX = LLAMA3_REGEX.replace(r"\p{N}{1,3}", r"\p{N}", 1)

# Step signature → llama.cpp pre-tokenizer. "bytelevel+regex" is ByteLevel with its built-in
# GPT-2 regex; "bytelevel" maps bytes only (a Split before it did the splitting).
KNOWN: dict[tuple, str] = {
    ("bytelevel+regex",): "gpt-2",
    (("split", GPT2_REGEX), "bytelevel"): "gpt-2",
    ("digits", "bytelevel+regex"): "smollm",
    (("split", LLAMA3_REGEX), "bytelevel"): "llama-bpe",
    (("split", QWEN2_REGEX), "bytelevel"): "qwen2",
}
# Normalizers llama.cpp's BPE path is equivalent under (none, or NFC on already-composed text).
_NORMALIZERS = (None, "NFC")


def _step(step: dict):
    kind = step.get("type")
    if kind == "ByteLevel":
        if step.get("add_prefix_space", False):
            return ("unsupported", "ByteLevel add_prefix_space")  # llama.cpp adds no prefix space for BPE
        return "bytelevel+regex" if step.get("use_regex", True) else "bytelevel"
    if kind == "Split" and step.get("behavior") == "Isolated" and not step.get("invert", False):
        pattern = step.get("pattern", {})
        return ("split", pattern.get("Regex", pattern.get("String")))
    if kind == "Digits" and step.get("individual_digits", False):
        return "digits"
    return ("unsupported", kind)


def signature(pre_tokenizer: dict | None) -> tuple:
    """The pre-tokenizer's steps in order, each reduced to what decides the splitting."""
    if not pre_tokenizer:
        return ()
    steps = pre_tokenizer.get("pretokenizers", []) if pre_tokenizer.get("type") == "Sequence" else [pre_tokenizer]
    return tuple(_step(s) for s in steps)


def pre_tokenizer_name(tokenizer_json: dict) -> str | None:
    """llama.cpp's pre-tokenizer for this BPE tokenizer, or None when no llama.cpp type splits alike."""
    model = tokenizer_json.get("model") or {}
    normalizer = (tokenizer_json.get("normalizer") or {}).get("type")
    if model.get("type") != "BPE" or normalizer not in _NORMALIZERS:
        return None
    return KNOWN.get(signature(tokenizer_json.get("pre_tokenizer")))


def pre_tokenizer_for_dir(model_dir: Path) -> str | None:
    """``pre_tokenizer_name`` of ``model_dir/tokenizer.json`` (None when there is no such file)."""
    path = Path(model_dir) / "tokenizer.json"
    if not path.is_file():
        return None
    try:
        return pre_tokenizer_name(json.loads(path.read_text(encoding="utf-8")))
    except ValueError:
        return None  # the converter reads it too, and says what is wrong with it
