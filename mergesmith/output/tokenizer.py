"""Tokenizer files, chat template and generation config for the output directory."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from importlib import resources
from pathlib import Path
from typing import Mapping, Optional

from mergesmith.errors import ConfigError
from mergesmith.io.resolve import ModelInput

TOKENIZER_FILES = (
    "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json", "tokenizer.model",
    "added_tokens.json", "merges.txt", "vocab.json", "chat_template.jinja", "chat_template.json",
)
TEMPLATE_NAMES = tuple(sorted(
    p.name[: -len(".jinja")] for p in (resources.files("mergesmith.output") / "templates").iterdir()
    if p.name.endswith(".jinja")
))


def copy_tokenizer(donor: ModelInput, dest: Path) -> None:
    if donor.gguf_file is not None:
        from mergesmith.io.gguf import save_gguf_tokenizer

        save_gguf_tokenizer(donor.gguf_file, dest)
        return
    for name in TOKENIZER_FILES:
        if (donor.path / name).is_file():
            shutil.copyfile(donor.path / name, dest / name)


def copy_generation_config(donor: ModelInput, dest: Path) -> None:
    if donor.gguf_file is not None:
        from mergesmith.io.gguf import gguf_generation_config

        ids = gguf_generation_config(donor.gguf_file)
        if ids:
            (dest / "generation_config.json").write_text(json.dumps(ids, indent=2) + "\n")
    elif (donor.path / "generation_config.json").is_file():
        shutil.copyfile(donor.path / "generation_config.json", dest / "generation_config.json")


def _template_of(model: ModelInput) -> Optional[str]:
    if model.gguf_file is not None:
        return None
    if (model.path / "chat_template.jinja").is_file():
        return (model.path / "chat_template.jinja").read_text()
    config = model.path / "tokenizer_config.json"
    if config.is_file():
        template = json.loads(config.read_text()).get("chat_template")
        return template if isinstance(template, str) else None
    return None


def resolve_chat_template(choice: str, models: Mapping[str, ModelInput], source: str) -> Optional[str]:
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
