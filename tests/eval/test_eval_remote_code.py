"""``mergesmith eval --trust-remote-code``: a model whose class ships with it (config.json ``auto_map``)."""

from __future__ import annotations

import json
import shutil

import pytest
from cli_helpers import assert_one_error_line, cli

# A model type transformers does not know, defined by code in the model's folder: llama renamed.
CUSTOM = """from transformers import LlamaConfig, LlamaForCausalLM


class PicoCustomConfig(LlamaConfig):
    model_type = "pico_custom"


class PicoCustomForCausalLM(LlamaForCausalLM):
    config_class = PicoCustomConfig
"""


@pytest.fixture
def custom_model(llama_family, tmp_path):
    folder = tmp_path / "custom"
    shutil.copytree(llama_family[0], folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(
        model_type="pico_custom",
        architectures=["PicoCustomForCausalLM"],
        auto_map={
            "AutoConfig": "modeling_pico_custom.PicoCustomConfig",
            "AutoModelForCausalLM": "modeling_pico_custom.PicoCustomForCausalLM",
        },
    )
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "modeling_pico_custom.py").write_text(CUSTOM)
    return folder


def test_shipped_code_is_refused_without_the_flag(custom_model, eval_text, capsys):
    code, out, err = cli(capsys, "eval", custom_model, "--text", eval_text, "--context", "64", "--limit", "2")
    assert_one_error_line(code, out, err, "model '", "pico_custom", "modeling_pico_custom.py", "--trust-remote-code")


def test_with_the_flag_it_scores_what_the_native_class_scores(custom_model, llama_family, eval_text, tmp_path, capsys):
    scores = {}
    for name, model, extra in (("custom", custom_model, ["--trust-remote-code"]), ("native", llama_family[0], [])):
        out_json = tmp_path / f"{name}.json"
        argv = ["eval", model, "--text", eval_text, "--context", "64", "--limit", "2", "--json", out_json, "--quiet"]
        code, _, err = cli(capsys, *argv, *extra)
        assert code == 0, err
        scores[name] = json.loads(out_json.read_text())["models"][0]["texts"]
    assert scores["custom"] and scores["custom"] == scores["native"]
