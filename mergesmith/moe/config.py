"""mergekit-moe's YAML, unchanged, as frozen strict types: unknown keys are errors with the nearest key.

base_model: M                 attention, norms and embeddings come from it; hidden states too
gate_mode: hidden             hidden | hidden_avg | cheap_embed | random | uniform_random
dtype: bfloat16               default: the base model's
experts_per_token: 2
experts: [{source_model, positive_prompts, negative_prompts, noise_scale, residual_scale}]
shared_experts: [...]         Qwen2-MoE only: exactly one
architecture: mixtral | qwen  default: mixtral, or qwen with a shared expert
tokenizer_source, chat_template   as in merge recipes (the tokenizer must fit the base's embeddings)
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mergesmith.config.load import check_dtype, load_yaml, read_text
from mergesmith.config.schema import ModelRef
from mergesmith.errors import ConfigError

# "hidden" and "hidden_last" read the last prompt token's hidden state, "hidden_avg" the mean over
# the prompt (mergekit's router.py); "cheap_embed" the prompt's summed token embeddings.
GATE_MODES = ("hidden", "hidden_last", "hidden_avg", "cheap_embed", "random", "uniform_random")
PROMPTED_MODES = ("hidden", "hidden_last", "hidden_avg", "cheap_embed")
# Output families: what `architecture:` may name (mergekit matches a prefix of its own names).
ARCHITECTURES = {"mixtral": "mixtral", "qwen": "qwen2_moe", "qwen2_moe": "qwen2_moe"}
UNSUPPORTED = ("qwen3", "deepseek")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Expert(_Frozen):
    source_model: ModelRef
    positive_prompts: tuple[str, ...] | None = None
    negative_prompts: tuple[str, ...] | None = None
    noise_scale: float | None = None
    residual_scale: float | None = None


class MoeConfig(_Frozen):
    base_model: ModelRef
    experts: tuple[Expert, ...] = Field(min_length=1)
    gate_mode: str = "hidden"
    dtype: str | None = None
    experts_per_token: int = 2
    shared_experts: tuple[Expert, ...] | None = None
    architecture: str | None = None
    tokenizer_source: ModelRef | None = None
    chat_template: str | None = None

    def all_experts(self) -> tuple[Expert, ...]:
        """Routed experts, then shared ones (the order of mergekit's gate vectors)."""
        return self.experts + (self.shared_experts or ())

    def referenced_models(self) -> tuple[str, ...]:
        """Every model the config opens, base first, each once."""
        keys = [self.base_model] + [e.source_model for e in self.all_experts()]
        if self.tokenizer_source not in (None, "base"):
            keys.append(self.tokenizer_source)
        return tuple(dict.fromkeys(keys))

    @property
    def family(self) -> str:
        """``mixtral`` or ``qwen2_moe`` (checked by :func:`parse_moe`)."""
        if self.architecture is None:
            return "qwen2_moe" if self.shared_experts else "mixtral"
        return ARCHITECTURES[self.architecture.lower()]


@dataclass(frozen=True)
class MoeSource:
    config: MoeConfig
    text: str  # the YAML as written, for the card
    name: str  # file name, for messages
    base_dir: Path | None


def is_moe_document(data: Any) -> bool:
    """A mergekit-moe config, told from a merge recipe by its keys."""
    return isinstance(data, dict) and "experts" in data and "merge_method" not in data


def is_moe_file(path: str | Path) -> bool:
    """Whether ``path`` holds one YAML document with mergekit-moe's keys (anything unreadable: no,
    and the merge path reports it)."""
    try:
        docs = load_yaml(Path(path).read_text(encoding="utf-8"), str(path), documents=True)
    except (OSError, UnicodeDecodeError, ConfigError):
        return False
    return len(docs) == 1 and is_moe_document(docs[0])


def _nearest(key: str, fields: list[str]) -> str:
    match = difflib.get_close_matches(key, fields, n=1, cutoff=0.5)
    return f"did you mean '{match[0]}'?" if match else f"valid keys: {', '.join(sorted(fields))}"


def _where(loc: tuple) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else ("." if i else "") + str(p) for i, p in enumerate(loc))


def _translate(error: ValidationError, source: str) -> ConfigError:
    first = error.errors()[0]
    loc = first["loc"]
    if first["type"] == "extra_forbidden":
        owner = Expert if any(p in ("experts", "shared_experts") for p in loc[:-1]) else MoeConfig
        return ConfigError(f"{source}: unknown key '{_where(loc)}'; {_nearest(str(loc[-1]), list(owner.model_fields))}")
    message = first["msg"].removeprefix("Value error, ")
    value = first.get("input")
    shown = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
    return ConfigError(f"{source}: {_where(loc) or 'the config'} = {shown}: {message}")


def _check_choices(config: MoeConfig, source: str) -> None:
    if config.gate_mode not in GATE_MODES:
        match = difflib.get_close_matches(config.gate_mode, GATE_MODES, n=1, cutoff=0.5)
        hint = f"did you mean '{match[0]}'?" if match else f"choose one of {', '.join(GATE_MODES)}"
        raise ConfigError(f"{source}: gate_mode '{config.gate_mode}' is unknown; {hint}")
    arch = (config.architecture or "").lower()
    if arch and arch not in ARCHITECTURES:
        why = "is not built by mergesmith" if arch.startswith(UNSUPPORTED) else "is unknown"
        raise ConfigError(f"{source}: architecture '{config.architecture}' {why}; choose mixtral or qwen (Qwen2-MoE)")
    check_dtype(config.dtype, "dtype", source)
    if config.tokenizer_source == "union":
        raise ConfigError(
            f"{source}: tokenizer_source 'union' would change the vocabulary, but a MoE keeps the base's "
            "embeddings; use 'base' or a model with the base's vocabulary"
        )


def _check_counts(config: MoeConfig, source: str) -> None:
    n = len(config.experts)
    if not 1 <= config.experts_per_token <= n:
        raise ConfigError(
            f"{source}: experts_per_token is {config.experts_per_token} but there are {n} experts; "
            f"give a value from 1 to {n}"
        )
    shared = len(config.shared_experts or ())
    if config.family == "mixtral" and shared:
        raise ConfigError(f"{source}: Mixtral has no shared experts; remove shared_experts or set architecture: qwen")
    if config.family == "qwen2_moe" and shared != 1:
        raise ConfigError(
            f"{source}: Qwen2-MoE takes exactly one shared expert, got {shared}; list one under shared_experts"
        )


def _check_prompts(config: MoeConfig, source: str) -> None:
    if config.gate_mode not in PROMPTED_MODES:
        return
    for where, experts in (("experts", config.experts), ("shared_experts", config.shared_experts or ())):
        for i, expert in enumerate(experts):
            if not expert.positive_prompts:
                raise ConfigError(
                    f"{source}: {where}[{i}] ({expert.source_model}) has no positive_prompts, which gate_mode "
                    f"'{config.gate_mode}' routes by; add a few prompts of what it should answer"
                )
    prompts = {(e.positive_prompts, e.negative_prompts or ()) for e in config.experts}
    if len(config.experts) > 1 and len(prompts) == 1:
        raise ConfigError(
            f"{source}: every expert has the same prompts, so every router row would be equal; "
            "give each expert prompts of its own domain"
        )


def parse_moe(data: Any, source: str = "<moe config>") -> MoeConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a MoE config is a YAML mapping with 'base_model' and 'experts'")
    try:
        config = MoeConfig.model_validate(data)
    except ValidationError as exc:
        raise _translate(exc, source) from None
    _check_choices(config, source)
    _check_counts(config, source)
    _check_prompts(config, source)
    return config


def read_moe(path: str | Path) -> MoeSource:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: MoE config file not found")
    text = read_text(path, "MoE config")
    return MoeSource(parse_moe(load_yaml(text, str(path)), str(path)), text, str(path), path.parent.resolve())
