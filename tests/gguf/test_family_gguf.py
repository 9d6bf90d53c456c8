"""GGUF export of every family beyond the first five: llama.cpp's logits against transformers', per
family, on pico models (tests/gguf/gguf_families.py), and the layouts llama.cpp would run wrong.

The models go through mergesmith's converter wrapper in one process (convert_batch.py); one family
also goes through ``export_gguf`` itself, which starts that wrapper once per file.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from convert_batch import convert_many
from gguf_families import GGUF_KINDS, make_gguf_model

from mergesmith.errors import ArchitectureError
from mergesmith.eval.gguf_model import load_gguf
from mergesmith.gguf.convert import SUPPORTED, check_architecture
from mergesmith.gguf.export import export_gguf

# Token ids of pico's vocabulary (the SentencePiece families' tokenizer.model has others): the
# check compares the two runtimes on the same ids.
IDS = [1, 40, 87, 5, 120, 33, 250, 17, 64, 9, 199, 41, 77, 2, 150, 3, 90, 12]


def test_every_listed_family_has_a_logits_check():
    first_five = {"llama", "mistral", "qwen2", "phi-2", "gemma3"}  # tests/gguf/test_export.py
    assert set(SUPPORTED.values()) == first_five | set(GGUF_KINDS)


@pytest.fixture(scope="module")
def exported(converter_dir, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("family-gguf")
    models = {kind: make_gguf_model(kind, root / kind) for kind in GGUF_KINDS}
    paths, failures = convert_many(converter_dir, models, root / "gguf")
    assert not failures, failures
    return {"models": models, "gguf": paths}


def _logits_agree(model_dir, gguf_path) -> None:
    from transformers import AutoModelForCausalLM

    got = load_gguf(str(gguf_path)).model(input_ids=torch.tensor([IDS])).logits[0]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        want = model(torch.tensor([IDS])).logits[0]
    scale = want.std().item()
    assert (got - want).abs().max().item() < 0.05 * scale  # F16 weights: close, not equal
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() > 0.9


@pytest.mark.parametrize("kind", GGUF_KINDS)
def test_llama_cpp_runs_each_family_like_transformers(kind, exported):
    assert check_architecture(exported["models"][kind]) == kind
    _logits_agree(exported["models"][kind], exported["gguf"][kind])


def test_export_gguf_of_a_new_family(exported, converter_dir, tmp_path):
    """The same through export_gguf (its own converter process), on a family with a fixed layout."""
    path = export_gguf(exported["models"]["cohere2"], tmp_path, "f16", converter=converter_dir).files[0].path
    _logits_agree(exported["models"]["cohere2"], path)


def _config_with(tmp_path, architecture: str, **values):
    model = tmp_path / architecture
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"architectures": [architecture], **values}))
    return model


@pytest.mark.parametrize(
    "architecture, values, words",
    [
        ("FalconForCausalLM", {"hidden_size": 64, "ffn_hidden_size": 128}, "ffn_hidden_size == 4 \\* hidden_size"),
        ("GPTBigCodeForCausalLM", {"n_embd": 64, "n_inner": 128}, "n_inner == 4 \\* n_embd"),
        ("CohereForCausalLM", {"use_qk_norm": True}, "no q/k norms"),
        ("Cohere2ForCausalLM", {"layer_types": ["sliding_attention", "full_attention"]}, "three sliding-window"),
        ("Qwen2MoeForCausalLM", {"norm_topk_prob": True}, "never renormalises"),
        ("Qwen3MoeForCausalLM", {"norm_topk_prob": False}, "always renormalises"),
        ("MambaForCausalLM", {"vocab_size": 300, "pad_vocab_size_multiple": 8}, "not a multiple"),
        ("Mamba2ForCausalLM", {"vocab_size": 312}, "multiple of pad_vocab_size_multiple 16"),
        (
            "Exaone4ForCausalLM",
            {"sliding_window": 8, "layer_types": ["sliding_attention", "full_attention"]},
            "global attention only",
        ),
    ],
)
def test_family_layouts_llama_cpp_would_run_wrong_are_refused(architecture, values, words, tmp_path):
    with pytest.raises(ArchitectureError, match=words):
        check_architecture(_config_with(tmp_path, architecture, **values))


@pytest.mark.parametrize(
    "architecture",
    ["BitNetForCausalLM", "GPTJForCausalLM", "GlmForCausalLM", "Llama4ForCausalLM"],
)
def test_families_without_a_passing_check_are_refused(architecture, tmp_path):
    model = _config_with(tmp_path, architecture)
    with pytest.raises(ArchitectureError, match=f"{architecture} cannot be exported to GGUF"):
        check_architecture(model)
    shutil.rmtree(model)
