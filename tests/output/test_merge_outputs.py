"""What a merge leaves on disk: loadable by transformers, a faithful card, right config."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from recipes import frankenmerge_recipe, models_recipe, slerp_recipe
from safetensors.torch import load_file

from mergesmith.api import merge, plan
from mergesmith.cli.main import main
from mergesmith.config.load import parse_recipe
from mergesmith.output.card import recipe_from_card


def _load(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


@pytest.mark.parametrize("kind", ["llama", "mistral", "qwen2", "phi2", "gemma3"])
def test_ties_output_loads_and_generates(kind, families, tmp_path):
    out = tmp_path / "out"
    merge(models_recipe("ties", families[kind], "bfloat16"), out, shard_size="40KB")
    assert (out / "model.safetensors.index.json").is_file()  # small shards force an index
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    tok = AutoTokenizer.from_pretrained(out)
    # Every weight came from the files (none freshly initialised), with the values written.
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    written = {}
    for shard in out.glob("*.safetensors"):
        written.update(load_file(shard))
    state = model.state_dict()
    for name, tensor in written.items():
        assert torch.equal(state[name].to(tensor.dtype), tensor), name
    ids = tok("Hello world", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
        generated = model.generate(ids, max_new_tokens=5, do_sample=False, min_new_tokens=5)
    assert torch.isfinite(logits).all()
    # Greedy generation continues from the prompt with the forward pass's own argmax: the
    # tokenizer, config and weights written make one working model.
    assert generated.shape[1] == ids.shape[1] + 5
    assert torch.equal(generated[0, : ids.shape[1]], ids[0])
    assert int(generated[0, ids.shape[1]]) == int(logits[0, -1].argmax())


def test_qwen2_tied_output_has_no_invented_lm_head(qwen2_family, tmp_path):
    out = tmp_path / "out"
    merge(models_recipe("linear", qwen2_family, "float32"), out)
    index_or_file = json.loads((out / "config.json").read_text())
    assert index_or_file["tie_word_embeddings"] is True
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), framework="pt") as fh:
        assert "lm_head.weight" not in fh.keys()
        assert "model.embed_tokens.weight" in fh.keys()


def test_passthrough_config_has_47_layers_and_loads(llama48, tmp_path):
    out = tmp_path / "out"
    merge(frankenmerge_recipe(llama48), out)
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 47
    assert config["torch_dtype"] == "bfloat16"
    model, _ = _load(out)
    assert len(model.model.layers) == 47


def test_gemma3_layer_types_follow_the_stacked_layers(gemma3_family, tmp_path):
    base = gemma3_family[0]
    source = json.loads((base / "config.json").read_text())["layer_types"]
    recipe = f"""
slices:
  - sources: [{{model: {base}, layer_range: [0, 3]}}]
  - sources: [{{model: {base}, layer_range: [1, 4]}}]
merge_method: passthrough
dtype: float32
"""
    out = tmp_path / "out"
    merge(recipe, out)
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 6
    assert config["layer_types"] == source[0:3] + source[1:4]
    model, _ = _load(out)
    assert len(model.model.layers) == 6


def test_card_yaml_parses_back_to_the_same_recipe(phi2_family, tmp_path):
    text = slerp_recipe(phi2_family[0], phi2_family[1], 4, "float16")
    out = tmp_path / "out"
    merge(text, out)
    card = (out / "README.md").read_text()
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["library_name"] == "transformers"
    assert front["tags"] == ["mergesmith", "merge", "slerp"]
    assert "base_model" not in front  # local inputs have no Hub id: named below, never as paths
    assert str(phi2_family[0].parent) not in card and f"* {phi2_family[0].name}\n" in card
    for heading in ("## Merge Details", "### Merge Method", "### Models Merged", "### Configuration"):
        assert heading in card
    assert card.index("### Merge Method") < card.index("### Models Merged") < card.index("### Configuration")
    by_name = text.replace(f"{phi2_family[0].parent}/", "")  # the card names models by their folder
    assert parse_recipe(yaml.safe_load(recipe_from_card(card))) == parse_recipe(yaml.safe_load(by_name))
    assert (out / "mergesmith_config.yml").read_text() == text


def test_tokenizer_and_chat_template_come_from_the_tokenizer_source(llama_family, tmp_path):
    recipe = (
        models_recipe("linear", llama_family, "float32")
        + f"tokenizer_source: {llama_family[2]}\nchat_template: chatml\n"
    )
    out = tmp_path / "out"
    merge(recipe, out)
    _, tok = _load(out)
    assert "<|im_start|>" in tok.chat_template
    assert tok("Hello world").input_ids == _load(llama_family[2])[1]("Hello world").input_ids
    assert (out / "generation_config.json").is_file()


def test_plan_prints_per_layer_t(llama48, tmp_path, capsys):
    recipe = tmp_path / "r.yml"
    # slerp needs two distinct models: use the 48-layer model against itself via a copy
    import shutil

    other = tmp_path / "other"
    shutil.copytree(llama48, other)
    recipe.write_text(slerp_recipe(llama48, other, 48, "float16"))
    assert main(["plan", str(recipe), "--tensors"]) == 0
    lines = capsys.readouterr().out.splitlines()
    q_rows = {line.split("\t")[0]: line.split("\t")[3] for line in lines if "self_attn.q_proj" in line}
    assert q_rows["model.layers.0.self_attn.q_proj.weight"] == "t=0"
    assert q_rows["model.layers.47.self_attn.q_proj.weight"] == "t=1"
    # layer 6 of 48: t = 6/47, scaled 0.5106 into [0, 0.5): 0.5 * 0.5106...
    expected = (1 - 6 / 47 * 4) * 0 + (6 / 47 * 4) * 0.5
    assert q_rows["model.layers.6.self_attn.q_proj.weight"] == f"t={expected:.6g}"
    mlp = [line for line in lines if line.startswith("model.layers.0.mlp.up_proj")][0]
    assert "\tt=1\t" in mlp
    norm = [line for line in lines if line.startswith("model.layers.3.input_layernorm")][0]
    assert "\tt=0.5\t" in norm


def test_plan_json_lists_every_tensor(llama_family):
    the_plan = plan(models_recipe("ties", llama_family, "bfloat16"))
    assert len(the_plan.jobs) == 1 + 4 * 9 + 2
    job = the_plan.by_output()["model.layers.2.mlp.down_proj.weight"]
    assert [s.model for s in job.sources] == [str(p) for p in llama_family]
    assert job.params.per_input[2]["weight"] == 0.9  # filter: mlp
    assert job.params.per_input[1]["density"] == pytest.approx(0.3 + 0.5 * 2 / 3)


def test_tokenizer_source_base_takes_the_base_models_files(llama_family, tmp_path):
    base = llama_family[0]
    recipe = tmp_path / "recipe.yml"
    recipe.write_text(models_recipe("ties", llama_family, "float32") + "tokenizer_source: base\n")
    out = tmp_path / "out"
    merge(recipe, out)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (out / name).read_bytes() == (base / name).read_bytes()
