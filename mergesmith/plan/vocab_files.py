"""An input model's vocabulary (token → id, added-token flags), read from its tokenizer files.

Plain JSON, no ``tokenizers`` import: ``tokenizer.json`` (model vocab plus ``added_tokens``), else
the slow-tokenizer files ``vocab.json`` + ``added_tokens.json`` + ``tokenizer_config.json``'s
``added_tokens_decoder``. GGUF inputs and SentencePiece-only directories have no readable
vocabulary here: :func:`read_vocab` returns None and the caller decides.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mergesmith.errors import InputFormatError
from mergesmith.io.header import ModelHeader
from mergesmith.plan.jobs import AddedToken


@dataclass(frozen=True)
class InputVocab:
    ids: Mapping[str, int]  # token → id, added tokens included
    added: Mapping[str, AddedToken]  # added tokens by content, with their flags
    file: Path


def _json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise InputFormatError(f"{path}: not valid JSON ({exc}); re-save the tokenizer") from None


def _added(entry: dict, path: Path) -> AddedToken:
    try:
        return AddedToken(
            id=int(entry["id"]),
            content=str(entry["content"]),
            special=bool(entry.get("special", False)),
            normalized=bool(entry.get("normalized", True)),
            lstrip=bool(entry.get("lstrip", False)),
            rstrip=bool(entry.get("rstrip", False)),
            single_word=bool(entry.get("single_word", False)),
        )
    except (KeyError, TypeError, ValueError):
        raise InputFormatError(
            f"{path}: added token {entry!r} needs 'id' and 'content'; re-save the tokenizer"
        ) from None


def _from_tokenizer_json(path: Path) -> InputVocab:
    data = _json(path)
    vocab = (data.get("model") or {}).get("vocab") if isinstance(data, dict) else None
    if isinstance(vocab, dict):  # BPE, WordPiece, WordLevel
        ids = {str(token): int(i) for token, i in vocab.items()}
    elif isinstance(vocab, list):  # Unigram: [piece, score] pairs, the id is the position
        ids = {str(entry[0]): i for i, entry in enumerate(vocab)}
    else:
        raise InputFormatError(f"{path}: no model.vocab; re-save the tokenizer with a fast tokenizer")
    added = {}
    for entry in data.get("added_tokens") or ():
        token = _added(entry, path)
        ids[token.content] = token.id
        added[token.content] = token
    return InputVocab(ids, added, path)


def _from_vocab_json(folder: Path) -> InputVocab:
    ids = {str(token): int(i) for token, i in _json(folder / "vocab.json").items()}
    added = {}
    if (folder / "added_tokens.json").is_file():
        for content, i in _json(folder / "added_tokens.json").items():
            added[content] = AddedToken(int(i), content)
    if (folder / "tokenizer_config.json").is_file():
        decoder = _json(folder / "tokenizer_config.json").get("added_tokens_decoder") or {}
        for i, entry in decoder.items():
            token = _added({**entry, "id": i}, folder / "tokenizer_config.json")
            added[token.content] = token
    ids.update({content: token.id for content, token in added.items()})
    return InputVocab(ids, added, folder / "vocab.json")


def read_vocab(model: ModelHeader) -> InputVocab | None:
    """The model's vocabulary, or None when it has no tokenizer file mergesmith can read."""
    folder = model.tokenizer_dir
    if folder is None:
        return None
    if (folder / "tokenizer.json").is_file():
        return _from_tokenizer_json(folder / "tokenizer.json")
    if (folder / "vocab.json").is_file():
        return _from_vocab_json(folder)
    return None
