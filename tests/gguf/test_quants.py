"""The type table, --quant parsing, the pre-tokenizer choice and fetching the converter: no model runs here."""

from __future__ import annotations

import io
import json
import tarfile

import gguf
import pytest

from mergesmith.errors import ConfigError, InputFormatError
from mergesmith.gguf.converter import _extract, check_converter
from mergesmith.gguf.pretok import (
    LLAMA3_REGEX,
    QWEN2_REGEX,
    pre_tokenizer_name,
    signature,
)
from mergesmith.gguf.quants import BY_NAME, NEEDS_IMATRIX, QUANT_TYPES, parse_quants


def test_every_type_is_a_llama_cpp_file_type_with_a_known_tensor_type():
    import llama_cpp

    for q in QUANT_TYPES:
        assert getattr(llama_cpp, f"LLAMA_FTYPE_{q.ftype}") == gguf.LlamaFileType[q.ftype], q
        assert q.tensor_type in gguf.GGMLQuantizationType.__members__, q
        assert q.tool == ("convert" if q.name in ("f32", "f16", "bf16") else "quantize")


def test_parse_keeps_order_drops_repeats_and_ignores_case():
    assert [q.name for q in parse_quants("Q4_K_M, f16,q4_k_m,,q8_0")] == ["q4_k_m", "f16", "q8_0"]


@pytest.mark.parametrize(
    "text, words",
    [
        ("q4_k_x", ["'q4_k_x'", "q4_k_m"]),
        (" , ", ["names no type", "--quant"]),
        ("iq2_xs", ["importance matrix", "q2_k"]),
        ("tq1_0", ["ternary", "q8_0"]),
    ],
)
def test_bad_types_are_config_errors_that_name_the_choices(text, words):
    with pytest.raises(ConfigError) as info:
        parse_quants(text)
    assert all(w in str(info.value) for w in words), str(info.value)


def test_imatrix_types_are_not_offered():
    assert not set(NEEDS_IMATRIX) & set(BY_NAME)


# --- pre-tokenizer from tokenizer.json ----------------------------------------------------------


def _tokenizer_json(pre, model="BPE", normalizer=None) -> dict:
    return {"model": {"type": model}, "normalizer": normalizer, "pre_tokenizer": pre}


def _bytelevel(use_regex=True, prefix=False) -> dict:
    return {"type": "ByteLevel", "add_prefix_space": prefix, "trim_offsets": True, "use_regex": use_regex}


def _split(regex: str) -> dict:
    return {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}


def test_pico_tokenizer_splits_like_gpt2():
    from pico import build_tokenizer

    data = json.loads(build_tokenizer().backend_tokenizer.to_str())
    assert signature(data["pre_tokenizer"]) == ("bytelevel+regex",)
    assert pre_tokenizer_name(data) == "gpt-2"


@pytest.mark.parametrize(
    "pre, name",
    [
        ({"type": "Sequence", "pretokenizers": [_split(LLAMA3_REGEX), _bytelevel(False)]}, "llama-bpe"),
        ({"type": "Sequence", "pretokenizers": [_split(QWEN2_REGEX), _bytelevel(False)]}, "qwen2"),
        (
            {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, _bytelevel()]},
            "smollm",
        ),
        ({"type": "Sequence", "pretokenizers": [_split(r"\d+"), _bytelevel(False)]}, None),  # a split llama.cpp lacks
        (_bytelevel(prefix=True), None),  # adds a space llama.cpp would not
        ({"type": "Whitespace"}, None),
    ],
)
def test_pre_tokenizer_is_chosen_by_its_rule(pre, name):
    assert pre_tokenizer_name(_tokenizer_json(pre)) == name


def test_non_bpe_or_normalized_tokenizers_get_no_name():
    assert pre_tokenizer_name(_tokenizer_json(_bytelevel(), model="Unigram")) is None
    assert pre_tokenizer_name(_tokenizer_json(_bytelevel(), normalizer={"type": "Lowercase"})) is None
    assert pre_tokenizer_name(_tokenizer_json(_bytelevel(), normalizer={"type": "NFC"})) == "gpt-2"


# --- the converter from the sdist ----------------------------------------------------------------


def _sdist(path, names) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name in names:
            data = f"# {name}\n".encode()
            info = tarfile.TarInfo(f"llama_cpp_python-9.9.9/vendor/llama.cpp/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_extract_copies_only_the_converter_and_its_gguf_py(tmp_path):
    sdist = tmp_path / "llama_cpp_python-9.9.9.tar.gz"
    _sdist(
        sdist,
        [
            "convert_hf_to_gguf.py",
            "conversion/__init__.py",
            "conversion/llama.py",
            "gguf-py/gguf/__init__.py",
            "gguf-py/tests/test_x.py",
            "LICENSE",
            "src/llama.cpp",
            "convert_lora_to_gguf.py",
        ],
    )
    _extract(sdist, tmp_path / "conv")
    got = sorted(str(p.relative_to(tmp_path / "conv")) for p in (tmp_path / "conv").rglob("*") if p.is_file())
    assert got == [
        "LICENSE",
        "conversion/__init__.py",
        "conversion/llama.py",
        "convert_hf_to_gguf.py",
        "gguf-py/gguf/__init__.py",
    ]
    assert check_converter(tmp_path / "conv") == tmp_path / "conv"


def test_an_sdist_without_the_converter_and_a_missing_converter_are_explained(tmp_path):
    sdist = tmp_path / "old.tar.gz"
    _sdist(sdist, ["convert.py", "src/llama.cpp"])
    with pytest.raises(InputFormatError, match="has no vendor/llama.cpp/convert_hf_to_gguf.py"):
        _extract(sdist, tmp_path / "conv")
    with pytest.raises(InputFormatError, match="python -m mergesmith.gguf.converter"):
        check_converter(tmp_path / "nowhere")


def test_export_fetches_the_converter_on_first_use(tmp_path, monkeypatch):
    """No setup step for pip users: the default folder is filled from the sdist the first time."""
    from mergesmith.gguf import converter

    sdist = tmp_path / "llama_cpp_python-9.9.9.tar.gz"
    _sdist(sdist, ["convert_hf_to_gguf.py", "conversion/__init__.py", "gguf-py/gguf/__init__.py", "LICENSE"])
    downloads = []

    def download(version, into):
        downloads.append(version)
        return sdist

    monkeypatch.setattr(converter, "llama_cpp_version", lambda: "9.9.9")
    monkeypatch.setattr(converter, "default_converter_dir", lambda version=None: tmp_path / "venv" / "conv-9.9.9")
    monkeypatch.setattr(converter, "_download", download)
    with pytest.warns(UserWarning, match="fetching llama.cpp's converter into"):
        assert converter.ensure_converter() == tmp_path / "venv" / "conv-9.9.9"
    assert downloads == ["9.9.9"] and (tmp_path / "venv" / "conv-9.9.9" / "convert_hf_to_gguf.py").is_file()
    assert converter.ensure_converter() == tmp_path / "venv" / "conv-9.9.9"  # the second time: no download
    assert downloads == ["9.9.9"]
    with pytest.raises(InputFormatError, match="is not in"):
        converter.ensure_converter(tmp_path / "elsewhere")  # a folder given must hold it: never fetched into
