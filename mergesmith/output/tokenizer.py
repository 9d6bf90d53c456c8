"""Tokenizer files, chat template and generation config for the output directory."""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from collections.abc import Mapping
from importlib import resources
from pathlib import Path

from mergesmith.errors import ConfigError, InputFormatError
from mergesmith.io.header import ModelInput
from mergesmith.plan.jobs import AddedToken, OutputVocab

TOKENIZER_FILES = (
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer.model",
    "added_tokens.json",
    "merges.txt",
    "vocab.json",
    "chat_template.jinja",
    "chat_template.json",
)
TEMPLATE_NAMES = tuple(
    sorted(
        p.name[: -len(".jinja")]
        for p in (resources.files("mergesmith.output") / "templates").iterdir()
        if p.name.endswith(".jinja")
    )
)


def check_tokenizer_files(donor: ModelInput) -> None:
    """Every tokenizer file the donor has can be read (and parsed, for JSON), so a merge never
    ends with a model whose tokenizer does not load. ``is_file()`` alone would skip a symlink
    loop or an unreadable file without a word."""
    if donor.gguf_file is not None:
        return
    for name in TOKENIZER_FILES + ("generation_config.json",):
        path = donor.path / name
        if not os.path.lexists(path):
            continue
        try:
            data = path.read_bytes()
            if name.endswith(".json"):
                json.loads(data.decode("utf-8"))
        except OSError as exc:
            reason = exc.strerror or str(exc)
        except (UnicodeDecodeError, ValueError) as exc:
            reason = f"not valid JSON: {exc}"
        else:
            continue
        raise InputFormatError(
            f"model '{donor.key}': tokenizer file {path} cannot be read ({reason}); the merge would have no "
            "working tokenizer: repair or re-download it, or take the tokenizer from another model (tokenizer_source)"
        )


def copy_tokenizer(donor: ModelInput, dest: Path, vocab: OutputVocab | None = None) -> None:
    """The donor's tokenizer files, plus the output vocabulary's new tokens when there are any."""
    if donor.gguf_file is not None:
        from mergesmith.io.gguf import save_gguf_tokenizer

        save_gguf_tokenizer(donor.gguf_file, dest)
        return
    for name in TOKENIZER_FILES:
        if (donor.path / name).is_file():
            shutil.copyfile(donor.path / name, dest / name)
    if vocab is not None and vocab.new_tokens:
        append_tokens(dest, vocab.new_tokens)


def _flags(token: AddedToken) -> dict:
    return {
        "content": token.content,
        "single_word": token.single_word,
        "lstrip": token.lstrip,
        "rstrip": token.rstrip,
        "normalized": token.normalized,
        "special": token.special,
    }


def append_tokens(dest: Path, tokens: tuple[AddedToken, ...]) -> None:
    """Add ``tokens`` (ids following the donor's) wherever the copied files list added tokens.

    tokenizer.json's ``added_tokens`` is what fast tokenizers read; ``added_tokens_decoder`` in
    tokenizer_config.json and added_tokens.json are kept in step where present (slow tokenizers).
    """

    def update(name: str, change) -> None:
        path = dest / name
        if path.is_file():
            data = json.loads(path.read_text(encoding="utf-8"))
            change(data)
            path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    update(
        "tokenizer.json", lambda d: d.setdefault("added_tokens", []).extend({"id": t.id, **_flags(t)} for t in tokens)
    )
    slow = not (dest / "tokenizer.json").is_file()

    def decoder(config: dict) -> None:
        if slow or "added_tokens_decoder" in config:
            config.setdefault("added_tokens_decoder", {}).update({str(t.id): _flags(t) for t in tokens})

    update("tokenizer_config.json", decoder)
    update("added_tokens.json", lambda d: d.update({t.content: t.id for t in tokens}))


def copy_generation_config(donor: ModelInput, dest: Path) -> None:
    if donor.gguf_file is not None:
        from mergesmith.io.gguf import gguf_generation_config

        ids = gguf_generation_config(donor.gguf_file)
        if ids:
            (dest / "generation_config.json").write_text(json.dumps(ids, indent=2) + "\n")
    elif (donor.path / "generation_config.json").is_file():
        shutil.copyfile(donor.path / "generation_config.json", dest / "generation_config.json")


# A multimodal model's processor files (image, video, the processor itself), beside its tokenizer's.
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json", "video_preprocessor_config.json")


def copy_processor_files(donor: ModelInput, dest: Path) -> None:
    """The config donor's processor files, so that a merged VLM loads with ``AutoProcessor`` as the
    donor does (a text model has none; a Hub input has them only once downloaded)."""
    if donor.gguf_file is not None:
        return
    for name in PROCESSOR_FILES:
        if (donor.path / name).is_file():
            shutil.copyfile(donor.path / name, dest / name)


def _template_of(model: ModelInput) -> str | None:
    if model.gguf_file is not None:
        return None
    if (model.path / "chat_template.jinja").is_file():
        return (model.path / "chat_template.jinja").read_text()
    config = model.path / "tokenizer_config.json"
    if config.is_file():
        template = json.loads(config.read_text()).get("chat_template")
        return template if isinstance(template, str) else None
    return None


def resolve_chat_template(choice: str, models: Mapping[str, ModelInput], source: str) -> str | None:
    """``auto`` (the most common among inputs), a built-in name, or Jinja text."""
    if choice == "auto":
        found = [_template_of(model) for model in models.values()]
        counts = Counter(t.strip() for t in found if t)
        return counts.most_common(1)[0][0] if counts else None
    if choice in TEMPLATE_NAMES:
        return (resources.files("mergesmith.output") / "templates" / f"{choice}.jinja").read_text()
    if "{" in choice:
        return choice
    raise ConfigError(
        f"{source}: chat_template '{choice}' is neither 'auto', a built-in ({', '.join(TEMPLATE_NAMES)}) nor Jinja text"
    )


def write_chat_template(template: str, dest: Path) -> None:
    """One place holds the template: chat_template.jinja (the tokenizer config's copy is removed)."""
    (dest / "chat_template.jinja").write_text(template.rstrip("\n") + "\n")
    (dest / "chat_template.json").unlink(missing_ok=True)
    config_path = dest / "tokenizer_config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text())
        if config.pop("chat_template", None) is not None:
            config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False))
