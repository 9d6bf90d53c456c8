"""A VLM's language model merged with a text-only fine-tune of it; the vision tower passes through.

For Qwen2-VL, Qwen2.5-VL, Gemma 3 and LLaVA: the output is the VLM with every tensor outside the
language model byte-identical to the VLM's, and every language-model tensor equal to the same
recipe run on the text-only pair (the VLM's language model saved as a text model, and the
fine-tune): the prefix mapping must change names only. The output loads in transformers.
mergekit 0.1.5 cannot run this recipe (the two inputs have different architectures; with
--allow-crimes it plans the text model's names and finds none in the VLM), so no mergekit
comparison here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from cli_helpers import copy_model, merge_fails, quiet_merge, rewrite_tensors
from pico import perturb_, save_model
from reference import load_dir
from vlm_pico import VLM_KINDS, build_vlm, language_model_of, save_vlm

from mergesmith.arch.multimodal import find_vlm

# The language model's names in the text model, per VLM name prefix (transformers 5.25's saves).
TO_TEXT = {
    "qwen2_vl": {"model.": "model.", "lm_head.": "lm_head."},
    "gemma3": {"language_model.model.": "model.", "language_model.lm_head.": "lm_head."},
}
TO_TEXT["qwen2_5_vl"], TO_TEXT["llava"] = TO_TEXT["qwen2_vl"], TO_TEXT["gemma3"]
TOWERS = {"qwen2_vl": ("visual.",), "qwen2_5_vl": ("visual.",), "gemma3": ("vision_tower.", "multi_modal_projector.")}
TOWERS["llava"] = TOWERS["gemma3"]


def slerp(a: Path, b: Path, t: float = 0.4) -> str:
    return f"models:\n  - model: {a}\n  - model: {b}\nmerge_method: slerp\nbase_model: {a}\nparameters:\n  t: {t}\n"


def text_name(kind: str, name: str) -> str | None:
    if name.startswith(TOWERS[kind]):
        return None
    return next(text + name[len(vlm) :] for vlm, text in TO_TEXT[kind].items() if name.startswith(vlm))


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    """kind -> (vlm, text model of its language model, text fine-tune)."""
    root = tmp_path_factory.mktemp("vlm")
    out = {}
    for kind in VLM_KINDS:
        vlm = build_vlm(kind, seed=1)
        text = language_model_of(vlm, kind)
        paths = [save_vlm(vlm, root / kind / "vlm"), save_model(text, root / kind / "text_base")]
        perturb_(text, torch.Generator().manual_seed(5))
        out[kind] = (*paths, save_model(text, root / kind / "text_ft"))
    return out


@pytest.mark.parametrize("kind", VLM_KINDS)
def test_language_model_merged_and_towers_passed_through(kind, family, tmp_path):
    vlm, text_base, text_ft = family[kind]
    out = quiet_merge(slerp(vlm, text_ft), tmp_path / "out")
    ref = load_dir(quiet_merge(slerp(text_base, text_ft), tmp_path / "ref"))
    merged, inputs = load_dir(out), load_dir(vlm)
    assert set(merged) == set(inputs)
    towers = [n for n in merged if text_name(kind, n) is None]
    assert towers and all(torch.equal(merged[n], inputs[n]) for n in towers)
    language = {text_name(kind, n): merged[n] for n in merged if text_name(kind, n) is not None}
    assert set(language) == set(ref) and all(torch.equal(language[n], ref[n]) for n in ref)
    assert any(not torch.equal(merged[n], inputs[n]) for n in merged if n not in towers)
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == json.loads((vlm / "config.json").read_text())["architectures"]
    assert config["text_config"]["num_hidden_layers"] == 2 and "num_hidden_layers" not in config


def test_the_vlms_processor_files_are_copied(family, tmp_path):
    vlm, _, text_ft = family["qwen2_vl"]
    donor = copy_model(vlm, tmp_path / "vlm")
    files = {"preprocessor_config.json": '{"image_processor_type": "Qwen2VLImageProcessor"}\n'}
    files["video_preprocessor_config.json"] = '{"video_processor_type": "Qwen2VLVideoProcessor"}\n'
    for name, text in files.items():
        (donor / name).write_text(text)
    out = quiet_merge(slerp(donor, text_ft), tmp_path / "out")
    assert {name: (out / name).read_text() for name in files} == files
    assert not (out / "processor_config.json").exists()  # the donor has none
    # Between text models there is nothing to copy.
    plain = quiet_merge(slerp(family["qwen2_vl"][1], text_ft), tmp_path / "plain")
    assert not any((plain / name).exists() for name in files)


@pytest.mark.parametrize("kind", ["gemma3", "qwen2_vl"])
def test_output_loads_in_transformers(kind, family, tmp_path):
    from transformers import AutoModelForImageTextToText

    vlm, _, text_ft = family[kind]
    out = quiet_merge(slerp(vlm, text_ft), tmp_path / "out")
    model = AutoModelForImageTextToText.from_pretrained(out, dtype=torch.float32)
    tensors = load_dir(out)
    state = model.state_dict()
    layer = "model.language_model.layers.1.mlp.down_proj.weight"
    saved = next(n for n in tensors if n.endswith("layers.1.mlp.down_proj.weight") and text_name(kind, n))
    assert torch.equal(state[layer], tensors[saved])
    assert torch.isfinite(model(input_ids=torch.tensor([[1, 5, 9, 42]])).logits).all()


def test_a_layer_stack_sets_the_text_config(family, tmp_path):
    """Gemma 3 keeps layer_types under text_config: a 3-layer stack must rewrite it there."""
    from transformers import AutoModelForImageTextToText

    vlm, _, text_ft = family["gemma3"]
    recipe = (
        f"slices:\n  - sources:\n      - model: {vlm}\n        layer_range: [0, 2]\n"
        f"  - sources:\n      - model: {text_ft}\n        layer_range: [1, 2]\nmerge_method: passthrough\n"
    )
    out = quiet_merge(recipe, tmp_path / "out")
    config = json.loads((out / "config.json").read_text())["text_config"]
    inputs = json.loads((vlm / "config.json").read_text())["text_config"]["layer_types"]
    assert config["num_hidden_layers"] == 3 and config["layer_types"] == inputs + inputs[1:2]
    merged = load_dir(out)
    ft = load_dir(text_ft)
    assert torch.equal(
        merged["language_model.model.layers.2.mlp.up_proj.weight"], ft["model.layers.1.mlp.up_proj.weight"]
    )
    assert AutoModelForImageTextToText.from_pretrained(out).config.text_config.num_hidden_layers == 3


def test_the_older_prefix_layout_is_read(family, tmp_path):
    """Checkpoints saved by transformers 4.5x name the language model model.language_model.*."""
    vlm, text_base, text_ft = family["qwen2_vl"]
    renamed = copy_model(vlm, tmp_path / "renamed")

    def rename(tensors):
        for name in list(tensors):
            if not name.startswith("lm_head."):
                tensors[name.replace("model.", "model.language_model.", 1).replace("visual.", "model.visual.", 1)] = (
                    tensors.pop(name)
                )

    rewrite_tensors(renamed, rename)
    merged = load_dir(quiet_merge(slerp(renamed, text_ft), tmp_path / "out"))
    ref = load_dir(quiet_merge(slerp(text_base, text_ft), tmp_path / "ref"))
    assert torch.equal(
        merged["model.language_model.layers.0.self_attn.q_proj.bias"], ref["model.layers.0.self_attn.q_proj.bias"]
    )
    assert torch.equal(merged["model.visual.blocks.1.mlp.fc2.weight"], load_dir(vlm)["visual.blocks.1.mlp.fc2.weight"])


def test_the_text_model_cannot_give_the_config(capsys, tmp_path, family):
    vlm, _, text_ft = family["llava"]
    merge_fails(capsys, tmp_path, slerp(text_ft, vlm), "base_model", str(vlm), "text-only")


def test_slices_over_vlms_only_need_the_modules_form(capsys, tmp_path, family):
    vlm = family["gemma3"][0]
    other = copy_model(vlm, tmp_path / "other")
    recipe = (
        f"slices:\n  - sources:\n      - model: {vlm}\n        layer_range: [0, 2]\n"
        f"      - model: {other}\n        layer_range: [0, 2]\nmerge_method: slerp\nbase_model: {vlm}\n"
        "parameters: {t: 0.5}\n"
    )
    merge_fails(capsys, tmp_path, recipe, "every model is a vision-language model", "modules:")


def test_an_unknown_layout_is_one_line(capsys, tmp_path, family):
    vlm, _, text_ft = family["gemma3"]
    odd = copy_model(vlm, tmp_path / "odd")
    rewrite_tensors(odd, lambda t: t.update({"audio_tower.proj.weight": torch.zeros(2)}))
    merge_fails(capsys, tmp_path, slerp(odd, text_ft), "fit none of the known layouts", str(odd))


def test_every_vlm_definition_is_found_by_class(family):
    for kind in VLM_KINDS:
        config = json.loads((family[kind][0] / "config.json").read_text())
        assert find_vlm(config) is not None and find_vlm({"architectures": ["LlamaForCausalLM"]}) is None


def test_a_padded_vocabulary_goes_to_text_config(family, tmp_path):
    """tokenizer.pad_to_multiple_of pads the language model's rows; the size lands in text_config."""
    from transformers import AutoModelForImageTextToText

    vlm, _, text_ft = family["gemma3"]
    recipe = slerp(vlm, text_ft) + "tokenizer:\n  source: base\n  pad_to_multiple_of: 64\n"
    out = quiet_merge(recipe, tmp_path / "out")
    config = json.loads((out / "config.json").read_text())
    assert config["text_config"]["vocab_size"] == 320 and "vocab_size" not in config
    assert load_dir(out)["language_model.model.embed_tokens.weight"].shape[0] == 320
    model = AutoModelForImageTextToText.from_pretrained(out, dtype=torch.float32)
    assert model.get_input_embeddings().weight.shape[0] == 320
