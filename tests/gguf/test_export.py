"""export_gguf on pico models sized for K-quants: every type read back with gguf.GGUFReader, every
architecture run by llama.cpp against transformers, and the refusals."""

from __future__ import annotations

import json
import shutil
import sys

import gguf
import pytest
import torch

from mergesmith.errors import (
    ArchitectureError,
    InputFormatError,
    MergesmithError,
    OutputExistsError,
)
from mergesmith.eval.gguf_model import load_gguf
from mergesmith.gguf.export import export_gguf
from mergesmith.gguf.quants import BY_NAME

ALL_TYPES = "f16,bf16,q8_0,q6_k,q5_k_m,q4_k_m,q3_k_m,q4_0,q5_0,q5_1,q2_k,q4_k_s,iq4_xs"
K_FAMILY = {"Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"}
PROMPT = "The quick brown fox jumps over the lazy dog. A model merge averages"


@pytest.fixture(scope="module")
def all_types(k_models, converter_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf-all")
    return export_gguf(k_models["llama"], out, ALL_TYPES, converter=converter_dir)


def _tensors(path) -> dict:
    reader = gguf.GGUFReader(str(path))
    return {t.name: (tuple(int(d) for d in t.shape), t.tensor_type.name) for t in reader.tensors}


def _file_type(path) -> int:
    return int(gguf.GGUFReader(str(path)).get_field(gguf.Keys.General.FILE_TYPE).contents())


def test_every_file_has_the_f16_tensors_in_the_requested_types(all_types):
    reference = _tensors(all_types.file("f16").path)
    assert len(reference) == 1 + 1 + 1 + 9 * 2  # embd, output_norm, output, 9 per block
    for f in all_types.files:
        quant = BY_NAME[f.quant]
        got = _tensors(f.path)
        assert f.path.name == f"{all_types.model.name}-{f.quant.upper()}.gguf"
        assert {n: s for n, (s, _) in got.items()} == {n: s for n, (s, _) in reference.items()}, f.quant
        assert _file_type(f.path) == gguf.LlamaFileType[quant.ftype], f.quant
        assert got["blk.0.attn_q.weight"][1] == got["blk.1.attn_k.weight"][1] == quant.tensor_type, f.quant
        for name, (shape, kind) in got.items():
            if len(shape) == 1:
                assert kind == "F32", (f.quant, name)  # norms stay float32 in every type
            elif quant.tensor_type in K_FAMILY:
                assert kind in K_FAMILY, (f.quant, name, kind)  # no legacy fallback at row length 256 / 512


def test_sizes_follow_the_types(all_types):
    bpw = {f.quant: f.bits_per_weight for f in all_types.files}
    assert bpw["f16"] == pytest.approx(bpw["bf16"]) and 15 < bpw["f16"] <= 16.5
    assert bpw["f16"] > bpw["q8_0"] > bpw["q6_k"] > bpw["q5_k_m"] > bpw["q4_k_m"] > bpw["q3_k_m"] > bpw["q2_k"]
    assert all(f.bytes == f.path.stat().st_size and f.seconds > 0 for f in all_types.files)
    assert not list(all_types.out_dir.glob(".*"))  # no partial or scratch files left


@pytest.mark.parametrize("kind", ["llama", "mistral", "qwen2", "phi2", "gemma3"])
def test_llama_cpp_runs_each_architecture_like_transformers(kind, k_models, converter_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = export_gguf(k_models[kind], tmp_path, "f16", converter=converter_dir).files[0].path
    loaded = load_gguf(str(path))
    hf_tok = AutoTokenizer.from_pretrained(k_models[kind])
    ids = hf_tok(PROMPT, add_special_tokens=False)["input_ids"]
    assert loaded.tokenizer(PROMPT)["input_ids"] == ids  # the chosen pre-tokenizer splits alike
    ids = [hf_tok.bos_token_id] + ids
    got = loaded.model(input_ids=torch.tensor([ids])).logits[0]
    model = AutoModelForCausalLM.from_pretrained(k_models[kind], dtype=torch.float32).eval()
    with torch.no_grad():
        want = model(torch.tensor([ids])).logits[0]
    scale = want.std().item()
    assert (got - want).abs().max().item() < 0.05 * scale, kind  # F16 weights: close, not equal
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() > 0.9


def test_existing_files_need_force(k_models, converter_dir, tmp_path):
    target = tmp_path / "qwen2-F16.gguf"
    target.write_bytes(b"not yet a GGUF")
    with pytest.raises(OutputExistsError, match="--force"):
        export_gguf(k_models["qwen2"], tmp_path, "f16", converter=converter_dir)
    assert target.read_bytes() == b"not yet a GGUF"
    export_gguf(k_models["qwen2"], tmp_path, "f16", converter=converter_dir, force=True)
    assert "token_embd.weight" in _tensors(target)


def _with_config(source, dest, **changes):
    model = shutil.copytree(source, dest)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, **changes}))
    return model


def test_unsupported_architecture_names_the_supported_ones(k_models, tmp_path):
    model = _with_config(k_models["llama"], tmp_path / "gptj", architectures=["GPTJForCausalLM"])
    with pytest.raises(ArchitectureError) as info:
        export_gguf(model, tmp_path / "out", "f16")
    for word in ("GPTJForCausalLM", "llama", "mistral", "qwen2", "phi-2", "gemma3", "falcon", "mixtral"):
        assert word in str(info.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "kind, change, words",
    [
        ("phi2", {"num_key_value_heads": 2}, "num_key_value_heads == num_attention_heads"),
        (
            "gemma3",
            {"layer_types": ["sliding_attention", "full_attention"] * 3},
            "five sliding-window layers per global",
        ),
    ],
)
def test_layouts_llama_cpp_would_run_wrong_are_refused(kind, change, words, k_models, tmp_path):
    model = _with_config(k_models[kind], tmp_path / kind, **change)
    with pytest.raises(ArchitectureError, match=words):
        export_gguf(model, tmp_path / "out", "f16")


def test_a_converter_failure_is_one_error_and_leaves_no_file(k_models, converter_dir, tmp_path):
    model = shutil.copytree(k_models["llama"], tmp_path / "broken")
    (model / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(InputFormatError, match=r"llama.cpp's converter could not write f16 GGUF from .*broken: \S"):
        export_gguf(model, tmp_path / "out", "f16,q8_0", converter=converter_dir)
    assert not (tmp_path / "out").exists()  # a failed export removes the folder it created


def test_missing_llama_cpp_python_says_which_extra(k_models, converter_dir, tmp_path, monkeypatch, capsys):
    from mergesmith.cli.main import main

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # what an environment without the extra sees
    with pytest.raises(MergesmithError, match=r"pip install 'mergesmith\[llama\]'"):
        export_gguf(k_models["llama"], tmp_path, "q4_k_m", converter=converter_dir)
    assert (
        main(
            [
                "export-gguf",
                str(k_models["llama"]),
                str(tmp_path),
                "--quant",
                "q8_0",
                "--quiet",
                "--converter",
                str(converter_dir),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'mergesmith[llama]'" in err[0]
    assert not list(tmp_path.iterdir())
