"""YAML text → a frozen :class:`Recipe`, with errors that name the key and the fix."""

from __future__ import annotations

import difflib
import warnings
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from mergesmith.config.schema import (
    Conditional,
    ModelEntry,
    OutputModule,
    OutputSlice,
    Recipe,
    SourceSlice,
    TokenizerSection,
)
from mergesmith.errors import ConfigError

DTYPES = ("float16", "bfloat16", "float32", "float64")

# Which schema type sits at a location, to suggest the nearest key of the right type.
_CHILD_TYPES: dict[str, type[BaseModel]] = {
    "slices": OutputSlice,
    "sources": SourceSlice,
    "models": ModelEntry,
    "tokenizer": TokenizerSection,
    "modules": OutputModule,
}


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key written twice in one mapping is an error
    (PyYAML keeps the last value silently)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            self.flatten_mapping(node)  # `<<:` merge keys may be overridden; written keys may not
            seen: dict = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:
                    continue  # an unhashable key: the base class reports it
                if first is not key_node:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"key '{key}' appears twice in one mapping (first on line "
                        f"{first.start_mark.line + 1}); keep one",
                        key_node.start_mark,
                    )
        return super().construct_mapping(node, deep=deep)


def read_text(path: Path, what: str = "recipe") -> str:
    """A text file as UTF-8, with one-line errors."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: the {what} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the {what} ({exc.strerror})") from None


def load_yaml(text: str, source: str, *, documents: bool = False):
    """YAML text → data (every document when ``documents``); duplicate keys and syntax errors are
    one ConfigError naming the source and the line."""
    try:
        if documents:
            return list(yaml.load_all(text, Loader=_StrictLoader))
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{source}: not valid YAML{at} ({exc.problem or exc.context})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML ({str(exc).splitlines()[0]})") from None


def _nearest(word: str, candidates: list[str]) -> str:
    match = difflib.get_close_matches(word, candidates, n=1, cutoff=0.5)
    return f"; did you mean '{match[0]}'?" if match else f"; valid keys: {', '.join(sorted(candidates))}"


def _where(loc: tuple) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif not (isinstance(item, str) and (item[0].isupper() or "[" in item or item.startswith("tuple"))):
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "<top level>"


def _owner_type(loc: tuple) -> type[BaseModel]:
    owner: type[BaseModel] = Recipe
    for item in loc[:-1]:
        if isinstance(item, str) and item in _CHILD_TYPES:
            owner = _CHILD_TYPES[item]
    return owner


def _translate(error: ValidationError, source: str) -> ConfigError:
    errors = error.errors()
    extra = [e for e in errors if e["type"] == "extra_forbidden"]
    if extra:
        loc = extra[0]["loc"]
        key = str(loc[-1])
        fields = list(_owner_type(loc).model_fields)
        if key in ("filter", "value") or "parameters" in loc:
            fields = list(Conditional.model_fields)
        return ConfigError(f"{source}: unknown key '{_where(loc)}'{_nearest(key, fields)}")
    # Unions produce one error per alternative; the deepest location is the most precise.
    first = max(errors, key=lambda e: len(_where(e["loc"])))
    if first.get("input", 0) is None and "parameters" in first["loc"]:  # `key: null`: no alternative fits
        at = first["loc"].index("parameters") + 2  # ... the parameter's name, then list positions
        loc = first["loc"][:at] + tuple(i for i in first["loc"][at:] if isinstance(i, int))
        return ConfigError(
            f"{source}: {_where(loc)} = null: a parameter needs a value (a number, true/false, a string, a list, "
            "or a list of filters); remove the key to take the method's default"
        )
    message = first["msg"].removeprefix("Value error, ")
    if not first["loc"]:
        return ConfigError(f"{source}: {message}")
    value = first.get("input")
    shown = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
    return ConfigError(f"{source}: {_where(first['loc'])} = {shown}: {message}")


def _warn_legacy(recipe: Recipe, source: str) -> None:
    for i, out_slice in enumerate(recipe.slices or ()):
        if out_slice.residual_weight is not None:
            warnings.warn(
                f"{source}: slices[{i}].residual_weight is a legacy key that neither mergekit "
                "nor mergesmith applies; remove it",
                stacklevel=3,
            )


def check_dtype(name: str | None, key: str, source: str) -> None:
    if name is None:
        return
    bare = name.removeprefix("torch.")
    if bare not in DTYPES:
        raise ConfigError(f"{source}: {key} '{name}' is not a dtype{_nearest(bare, list(DTYPES))}")


def parse_recipe(data: Any, source: str = "<recipe>") -> Recipe:
    """Validate a YAML document (already loaded) into a frozen Recipe."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a recipe is a YAML mapping with 'merge_method', got {type(data).__name__}")
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise _translate(exc, source) from None
    check_dtype(recipe.dtype, "dtype", source)
    check_dtype(recipe.out_dtype, "out_dtype", source)
    _warn_legacy(recipe, source)
    return recipe


def load_recipe(path_or_text: str | Path) -> Recipe:
    """A recipe from a YAML file path, or from YAML text when no such file exists."""
    path = Path(path_or_text) if isinstance(path_or_text, Path) or "\n" not in str(path_or_text) else None
    if path is not None:
        if not path.is_file():
            raise ConfigError(f"{path}: recipe file not found")
        text, source = read_text(path), str(path)
    else:
        text, source = str(path_or_text), "<recipe>"
    return parse_recipe(load_yaml(text, source), source)


def dtype_name(name: str | None) -> str | None:
    """``torch.bfloat16`` and ``bfloat16`` name the same dtype."""
    if name is None:
        return None
    return name.removeprefix("torch.")
