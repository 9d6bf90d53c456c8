"""`mergesmith moe` output through `export-gguf`: llama.cpp's converter reads the per-expert layout,
the GGUF says how many experts, and llama.cpp runs it as transformers does."""

from __future__ import annotations

import gguf
import pytest
import torch
from moe_configs import moe_config, write_config

from mergesmith.moe.build import build_moe

PROMPT = "The quick brown fox jumps over the lazy dog. A model merge averages"


@pytest.fixture(scope="module")
def converter_dir():
    from mergesmith.gguf.converter import check_converter

    return check_converter()


def _field(reader: gguf.GGUFReader, key: str):
    return reader.get_field(key).contents()


def test_mixtral_exports_and_runs_like_transformers(llama_family, converter_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mergesmith.eval.gguf_model import load_gguf
    from mergesmith.gguf.export import export_gguf

    base, ft1, ft2 = llama_family
    out = tmp_path / "moe"
    build_moe(write_config(tmp_path, moe_config(base, [ft1, ft2], experts_per_token=1)), out)
    path = export_gguf(out, tmp_path / "gguf", "f16", converter=converter_dir).files[0].path
    reader = gguf.GGUFReader(str(path))
    arch = _field(reader, gguf.Keys.General.ARCHITECTURE)
    assert _field(reader, f"{arch}.expert_count") == 2 and _field(reader, f"{arch}.expert_used_count") == 1
    shapes = {t.name: tuple(int(d) for d in t.shape) for t in reader.tensors}
    assert shapes["blk.0.ffn_gate_inp.weight"] == (64, 2)
    assert shapes["blk.3.ffn_down_exps.weight"] == (128, 64, 2)
    hf_tok = AutoTokenizer.from_pretrained(out)
    ids = [hf_tok.bos_token_id] + hf_tok(PROMPT, add_special_tokens=False)["input_ids"]
    got = load_gguf(str(path)).model(input_ids=torch.tensor([ids])).logits[0]
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        want = model(torch.tensor([ids])).logits[0]
    assert (got - want).abs().max().item() < 0.05 * want.std().item()  # F16 weights: close, not equal


def test_qwen2_moe_export_is_refused_in_one_line(llama_family, tmp_path, capsys):
    """The Qwen2-MoE output renormalises the chosen experts' weights (norm_topk_prob, as mergekit
    writes it: k copies of one MLP then give that MLP); llama.cpp's qwen2moe graph does not, so
    export-gguf refuses rather than write a GGUF that runs differently."""
    from cli_helpers import assert_one_error_line, cli

    base, ft1, ft2 = llama_family
    config = moe_config(base, [ft1, ft2], architecture="qwen", experts_per_token=1)
    config["shared_experts"] = [{"source_model": str(base), "positive_prompts": ["Hello world"]}]
    build_moe(write_config(tmp_path, config), tmp_path / "moe")
    code, out, err = cli(capsys, "export-gguf", tmp_path / "moe", tmp_path / "gguf", "--quant", "f16", "--quiet")
    assert_one_error_line(code, out, err, "norm_topk_prob is true")
    assert not list((tmp_path / "gguf").glob("*.gguf"))  # a missing folder globs to nothing too
