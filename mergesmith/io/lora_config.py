"""A PEFT adapter's ``adapter_config.json``, read strictly: every value ``io/lora.py`` folds with is
checked here, so a hand-edited or foreign config fails in one line naming the file and the key.

PEFT's own rules are kept: ``r`` / ``lora_alpha`` per module from ``rank_pattern`` /
``alpha_pattern`` (the first pattern matching the module name's dotted tail), and
``target_modules`` as a list of names (a module matches by its name or dotted tail), a regular
expression (full match), or ``all-linear``.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path

from mergesmith.errors import InputFormatError

ADAPTER_CONFIG = "adapter_config.json"
SUPPORTED = (
    "mergesmith folds plain LoRA (peft_type LORA on Linear, Conv1D and Embedding layers, "
    "with rsLoRA, rank/alpha patterns, lora_bias and modules_to_save)"
)
# Adapter features whose merge is not W + scale·BA: refused rather than merged wrongly.
UNSUPPORTED_KEYS = (
    "use_dora",
    "layer_replication",
    "trainable_token_indices",
    "target_parameters",
    "alora_invocation_tokens",
    "use_qalora",
    "use_bdlora",
)
RESAVE = "re-save the adapter with peft's save_pretrained()"


def read_config(adapter_dir: Path, key: str) -> dict:
    path = adapter_dir / ADAPTER_CONFIG
    if not path.is_file():
        raise InputFormatError(
            f"model '{key}': {adapter_dir} has no {ADAPTER_CONFIG}; "
            "the part after '+' must be a PEFT LoRA adapter directory"
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:  # UnicodeDecodeError included
        raise InputFormatError(f"{path}: not valid JSON ({exc}); repair it or {RESAVE}") from None
    if not isinstance(config, dict):
        raise InputFormatError(f"{path}: holds a JSON {type(config).__name__}, not an object; {RESAVE}")
    if config.get("peft_type") != "LORA":
        raise InputFormatError(f"{path}: peft_type is {config.get('peft_type')!r}; {SUPPORTED}")
    for name in UNSUPPORTED_KEYS:
        if config.get(name):
            raise InputFormatError(
                f"{path}: {name} = {config[name]!r} is not supported; {SUPPORTED}. "
                "Merge this adapter with peft's merge_and_unload() and give the result as a model"
            )
    _check_numbers(config, path)
    return config


def _check_numbers(config: dict, path: Path) -> None:
    """``r`` is a positive integer and ``lora_alpha`` a number, also inside their patterns."""
    for name, pattern_key, is_rank in (("r", "rank_pattern", True), ("lora_alpha", "alpha_pattern", False)):
        patterns = config.get(pattern_key) or {}
        if not isinstance(patterns, dict):
            raise InputFormatError(f"{path}: {pattern_key} is {patterns!r}; it maps module name patterns to values")
        for where, value in ((name, config.get(name)), *((f"{pattern_key}['{k}']", v) for k, v in patterns.items())):
            number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not number or (is_rank and (not isinstance(value, int) or value < 1)):
                want = "a positive integer (the LoRA rank)" if is_rank else "a number (the LoRA alpha)"
                raise InputFormatError(f"{path}: {where} is {value!r}; it must be {want}")
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise InputFormatError(
                    f"{path}: {pattern_key} key '{pattern}' is not a regular expression ({exc})"
                ) from None


def pattern_value(patterns: Mapping, module: str, default):
    """PEFT's rule: the first pattern that matches the module name's dotted tail."""
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return value
    return default


def scale(config: dict, module: str, rank: int, file: Path, a_name: str) -> float:
    r = pattern_value(config.get("rank_pattern") or {}, module, config.get("r"))
    alpha = pattern_value(config.get("alpha_pattern") or {}, module, config.get("lora_alpha"))
    if r != rank:
        raise InputFormatError(
            f"{file}: {a_name} has rank {rank} but {ADAPTER_CONFIG} gives r = {r} for {module}; "
            f"the adapter's config and weights disagree: {RESAVE}"
        )
    return alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r


def saved_whole(config: dict, module: str, wrapper: str | None, param: str) -> bool:
    """Whether PEFT would load this full tensor into the base (not a stray key)."""
    if wrapper:
        return True
    saved = config.get("modules_to_save") or ()
    if any(module == m or module.endswith("." + m) for m in saved):
        return True
    if config.get("ensure_weight_tying") and param == "weight":
        return True  # the head saved whole beside its tied embedding (see io/lora.py _untie)
    return param == "bias" and config.get("bias", "none") != "none"


def check_target_modules(config: dict, path: Path, key: str, tensor_names: Iterable[str]) -> None:
    """As PEFT does when it loads the adapter: ``target_modules`` matching no module of the base is an
    error (the adapter belongs to another model); a list entry matching none is ignored, with a warning."""
    targets = config.get("target_modules")
    if targets is None or targets == "all-linear":
        return
    modules = {name.rsplit(".", 1)[0] for name in tensor_names}
    if isinstance(targets, str):
        try:
            if not any(re.fullmatch(targets, m) for m in modules):
                raise InputFormatError(
                    f"{path}: target_modules '{targets}' matches no module of the base model in '{key}'; "
                    "the adapter was trained on a different model"
                )
        except re.error as exc:
            raise InputFormatError(f"{path}: target_modules '{targets}' is not a regular expression ({exc})") from None
        return
    if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
        raise InputFormatError(
            f"{path}: target_modules is {targets!r}; it is a list of module names or a regular expression"
        )
    unmatched = [t for t in targets if not any(m == t or m.endswith("." + t) for m in modules)]
    if unmatched and len(unmatched) == len(targets):
        raise InputFormatError(
            f"{path}: target_modules {targets} name no module of the base model in '{key}'; "
            "the adapter was trained on a different model"
        )
    if unmatched:
        warnings.warn(
            f"{path}: target_modules {unmatched} match no module of the base model in '{key}'; ignored, as PEFT does",
            stacklevel=2,
        )
