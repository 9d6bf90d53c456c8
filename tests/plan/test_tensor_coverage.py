"""Every input tensor is merged, ignored on purpose, or stops the plan; a tied head is never written.

Pico llamas saved with ``attention_bias`` and ``mlp_bias`` (their biases must merge like any
tensor and reload in transformers), a llama holding tensors no definition lists, one holding the
``rotary_emb.inv_freq`` buffers old checkpoints carry, and a qwen2 pair where one model ties the
head to the embeddings and the other is saved with its own.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from pico import build_model, perturb_, pico_config, save_model
from reference import compare, load_dir, run_mergekit
from safetensors.torch import load_file, save_file

from mergesmith.api import merge, plan
from mergesmith.arch.spec import all_architectures
from mergesmith.cli.main import main
from mergesmith.errors import MissingTensorError

LAYERS = 2
BIAS_FLAGS = ("attention_bias", "mlp_bias")
LINEAR = """\
merge_method: linear
dtype: float32
{base}models:
  - model: {a}
    parameters: {{weight: {wa}}}
  - model: {b}
    parameters: {{weight: {wb}}}
"""


def _model(kind: str, *, seed: int, delta: int | None, **config_changes):
    """A pico model of ``kind`` with ``config_changes``, perturbed by generator seed ``delta``."""
    from transformers import AutoModelForCausalLM

    config = pico_config(kind, LAYERS)
    for key, value in config_changes.items():
        setattr(config, key, value)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    if delta is not None:  # transformers initialises biases to zero: perturb to make them count
        perturb_(model, torch.Generator().manual_seed(delta))
    return model


def _with_tensors(src: Path, dst: Path, extra: dict[str, torch.Tensor]) -> Path:
    """A copy of the one-file model ``src`` with ``extra`` tensors added to its safetensors file."""
    shutil.copytree(src, dst)
    tensors = load_file(dst / "model.safetensors")
    save_file({**tensors, **extra}, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("coverage")
    flags = dict.fromkeys(BIAS_FLAGS, True)
    paths = {
        "bias_a": save_model(_model("llama", seed=0, delta=1, **flags), root / "bias_a"),
        "bias_b": save_model(_model("llama", seed=0, delta=2, **flags), root / "bias_b"),
        "llama": save_model(build_model("llama", seed=5, num_layers=LAYERS), root / "llama"),
        "tied": save_model(build_model("qwen2", seed=2, num_layers=LAYERS), root / "tied"),
        "untied": save_model(_model("qwen2", seed=2, delta=3, tie_word_embeddings=False), root / "untied"),
    }
    paths["odd"] = _with_tensors(
        paths["llama"],
        root / "odd",
        {
            "model.layers.1.self_attn.q_norm.weight": torch.ones(16),
            "model.layers.0.mlp.extra_proj.weight": torch.zeros(4, 64),
        },
    )
    paths["old"] = _with_tensors(
        paths["llama"],
        root / "old",
        {f"model.layers.{i}.self_attn.rotary_emb.inv_freq": torch.rand(8) for i in range(LAYERS)},
    )
    return paths


@pytest.fixture(scope="module")
def bias_merge(models, tmp_path_factory) -> tuple[str, Path]:
    recipe = LINEAR.format(base="", a=models["bias_a"], b=models["bias_b"], wa=0.3, wb=0.7)
    out = tmp_path_factory.mktemp("bias-merge") / "out"
    merge(recipe, out)
    return recipe, out


def _bias_names(tensors) -> set[str]:
    return {n for n in tensors if n.endswith(".bias")}


def test_llama_biases_merge_like_any_tensor_and_reload(models, bias_merge):
    from transformers import AutoModelForCausalLM

    a, b, out = load_dir(models["bias_a"]), load_dir(models["bias_b"]), load_dir(bias_merge[1])
    assert len(_bias_names(a)) == LAYERS * 7 and _bias_names(out) == _bias_names(a)
    for name in _bias_names(a):
        torch.testing.assert_close(out[name], 0.3 * a[name] + 0.7 * b[name], rtol=1e-6, atol=1e-7)
    model, info = AutoModelForCausalLM.from_pretrained(bias_merge[1], output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    loaded = dict(model.named_parameters())
    for name in _bias_names(a):
        assert torch.equal(loaded[name].detach(), out[name]), name


@pytest.mark.mergekit
def test_mergekit_drops_the_biases_and_agrees_on_the_rest(models, bias_merge, tmp_path):
    recipe, ours_dir = bias_merge
    ours, ref = load_dir(ours_dir), load_dir(run_mergekit(recipe, tmp_path / "ref"))
    assert set(ours) - set(ref) == _bias_names(load_dir(models["bias_a"]))  # mergekit 0.1.5 loses them
    assert set(ref) <= set(ours)
    parity = compare({n: ours[n] for n in ref}, ref)
    assert parity.matches and parity.exact == len(ref), parity.summary()


def test_unlisted_tensors_stop_the_merge_before_any_output(models, tmp_path, capsys):
    recipe = tmp_path / "recipe.yml"
    recipe.write_text(LINEAR.format(base="", a=models["llama"], b=models["odd"], wa=0.5, wb=0.5))
    out = tmp_path / "out"
    capsys.readouterr()
    code = main(["merge", str(recipe), str(out)])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    for fragment in (
        str(models["odd"]),
        "2 tensors",
        "model.layers.0.mlp.extra_proj.weight",
        "model.layers.1.self_attn.q_norm.weight",
        "mergesmith/arch/data/llama.json",
    ):
        assert fragment in lines[0], (fragment, lines[0])
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["recipe.yml"]


def test_old_rotary_buffers_are_ignored(models):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # ignored on purpose: no error and no warning
        the_plan = plan(LINEAR.format(base="", a=models["llama"], b=models["old"], wa=0.5, wb=0.5))
    read = {s.name for job in the_plan.jobs for s in job.sources}
    assert not any("inv_freq" in name for name in read)
    assert {job.output for job in the_plan.jobs} == set(load_dir(models["llama"]))


def test_ignored_buffer_names_match_layer_indices_only():
    specs = [s for s in all_architectures() if s.ignored_buffers]
    assert {s.family for s in specs} == {"llama", "gpt2", "gpt_neox", "gpt_neo", "gptj", "codegen"}
    for spec in specs:
        merged = {w.name for w in spec.pre + spec.layer + spec.post}
        for template in spec.ignored_buffers:
            assert template not in merged, f"{spec.family}: {template} is both merged and ignored"
            assert spec.unlisted([template.format(layer=0), template.format(layer=11)], 12) == []
            odd = template.replace("{layer}", "x")
            assert spec.unlisted([odd], 12) == [odd]


@pytest.mark.parametrize("model_type", ["llama", "qwen3", "gemma", "gemma2", "gemma3_text", "stablelm"])
def test_flagged_biases_are_what_transformers_creates(model_type):
    """With every bias flag on, transformers' tensors are all listed, flagged ones included."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        model_type,
        vocab_size=300,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        tie_word_embeddings=False,
        attention_bias=True,
        mlp_bias=True,
        use_qkv_bias=True,
    )
    names = set(AutoModelForCausalLM.from_config(config).state_dict())
    spec = next(s for s in all_architectures() if s.model_type == model_type)
    flagged = {w.at_layer(i).name for i in range(LAYERS) for w in spec.layer if w.config_flag}
    assert flagged and all(w.optional for w in spec.layer if w.config_flag)
    assert spec.unlisted(names, LAYERS) == [] and flagged <= names


def test_tie_defaults_are_the_config_classes():
    from transformers import AutoConfig

    for spec in all_architectures():
        assert spec.tie_word_embeddings == AutoConfig.for_model(spec.model_type).tie_word_embeddings, spec.family


def _merge_pair(models, out: Path, base: str) -> list[str]:
    """Linear 0.5/0.5 of the tied and untied qwen2 with ``base`` as config donor; the warnings."""
    recipe = LINEAR.format(base=f"base_model: {models[base]}\n", a=models["tied"], b=models["untied"], wa=0.5, wb=0.5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        merge(recipe, out)
    return [str(w.message) for w in caught if "lm_head" in str(w.message)]


def _loads_cleanly(path: Path):
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    return model


def test_tied_output_writes_no_head_and_says_whose_is_dropped(models, tmp_path):
    notes = _merge_pair(models, tmp_path / "out", base="tied")
    assert len(notes) == 1 and f"'{models['untied']}'" in notes[0] and "tie_word_embeddings: false" in notes[0]
    tied, untied, out = (load_dir(p) for p in (models["tied"], models["untied"], tmp_path / "out"))
    assert "lm_head.weight" not in out and "lm_head.weight" in untied
    assert json.loads((tmp_path / "out" / "config.json").read_text())["tie_word_embeddings"] is True
    embed = "model.embed_tokens.weight"
    torch.testing.assert_close(out[embed], 0.5 * tied[embed] + 0.5 * untied[embed], rtol=1e-6, atol=1e-7)
    model = _loads_cleanly(tmp_path / "out")
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_untied_output_merges_its_head_with_the_tied_models_embeddings(models, tmp_path):
    assert _merge_pair(models, tmp_path / "out", base="untied") == []
    tied, untied, out = (load_dir(p) for p in (models["tied"], models["untied"], tmp_path / "out"))
    assert json.loads((tmp_path / "out" / "config.json").read_text())["tie_word_embeddings"] is False
    head = 0.5 * tied["model.embed_tokens.weight"] + 0.5 * untied["lm_head.weight"]
    torch.testing.assert_close(out["lm_head.weight"], head, rtol=1e-6, atol=1e-7)
    _loads_cleanly(tmp_path / "out")


def test_untied_donor_outside_the_last_slice_still_gets_a_head(models):
    """Passthrough: layers of the untied model, then of the tied one, whose embeddings are its head."""
    recipe = f"""\
merge_method: passthrough
slices:
  - sources: [{{model: {models["untied"]}, layer_range: [0, {LAYERS}]}}]
  - sources: [{{model: {models["tied"]}, layer_range: [0, {LAYERS}]}}]
"""
    with pytest.warns(UserWarning, match="no model of the last slice has one"):
        the_plan = plan(recipe)
    assert the_plan.config_donor == str(models["untied"])
    head = the_plan.by_output()["lm_head.weight"]
    assert [(s.model, s.name) for s in head.sources] == [(str(models["tied"]), "model.embed_tokens.weight")]


def test_biases_follow_the_output_configs_flags(models):
    """A config donor without the flags drops the biases (transformers would ignore them); a donor
    with them cannot be merged with a model lacking them."""
    slerp = f"""\
merge_method: slerp
base_model: {models["llama"]}
models: [{{model: {models["llama"]}}}, {{model: {models["bias_a"]}}}]
parameters: {{t: 0.5}}
"""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        the_plan = plan(slerp)
    notes = [str(w.message) for w in caught if "leaves" in str(w.message)]
    assert [flag for flag in BIAS_FLAGS if any(f"leaves {flag} off" in n for n in notes)] == list(BIAS_FLAGS), notes
    assert all(f"'{models['bias_a']}'" in n for n in notes) and len(notes) == 2
    assert not any(job.output.endswith(".bias") for job in the_plan.jobs)
    with pytest.raises(MissingTensorError, match=r"q_proj\.bias; its config.json leaves attention_bias off"):
        plan(LINEAR.format(base="", a=models["bias_a"], b=models["llama"], wa=0.5, wb=0.5))
