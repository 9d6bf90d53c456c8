"""Architectures defined by code shipped with the model (config.json ``auto_map``).

Refused with one line unless the user opts in (``--trust-remote-code``); with it, merged from
their tensor names (inference) with the code copied beside the output's config. Inference is
checked on every remote-code family mergekit 0.1.5 defines, with the tensor names its own
definition lists.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from cli_helpers import assert_nothing_written, cli, copy_model, merge_fails, output_tensors, write_recipe
from families import REMOTE_FAMILIES
from pico import make_family

from mergesmith.api import merge
from mergesmith.arch.infer import infer_arch
from mergesmith.errors import ArchitectureError

AUTO_MAP = {
    "AutoConfig": "configuration_exaone.ExaoneConfig",
    "AutoModelForCausalLM": "modeling_exaone.ExaoneForCausalLM",
}
VOCAB, HIDDEN = 300, 64


def _mergekit_definition(name: str) -> dict:
    import mergekit

    return json.loads((Path(mergekit.__file__).parent / "_data" / "architectures" / f"{name}.json").read_text())


def _names_of(definition: dict, layers: int) -> tuple[list[str], list[str], list[str]]:
    def names(weights, i=None):
        return [w["name"].replace("${layer_index}", str(i)) for w in weights]

    layer = [n for i in range(layers) for n in names(definition["layer_templates"]["weights"], i)]
    return names(definition.get("pre_weights", [])), layer, names(definition.get("post_weights", []))


def _shape(name: str) -> list[int]:
    if name.endswith(".bias") or "norm" in name or ".ln" in name or name.endswith((".inv_freq", ".slopes")):
        return [HIDDEN]
    vocab_parts = ("embed", "wte", "lm_head", "output", "word_embeddings")
    return [VOCAB, HIDDEN] if any(p in name for p in vocab_parts) else [HIDDEN, HIDDEN]


@pytest.mark.parametrize("name", REMOTE_FAMILIES)
def test_inference_covers_remote_code_families(name):
    definition = _mergekit_definition(name)
    pre, layer, post = _names_of(definition, 2)
    config = {
        definition.get("num_layers_config_key", "num_hidden_layers"): 2,
        "vocab_size": VOCAB,
        "architectures": definition["architectures"],
    }
    spec = infer_arch(config, {n: _shape(n) for n in pre + layer + post}, name)
    assert {w.at_layer(i).name for i in range(2) for w in spec.layer} == set(layer)
    assert {w.name for w in spec.pre + spec.post} == set(pre + post)
    assert [w.vocab_axis for w in spec.pre][:1] == [0]


def test_phi1_layout_is_refused_by_inference():
    """MixFormer-sequential numbers its embedding and head as layers 0 and N+1: no uniform stack."""
    pre, layer, post = _names_of(_mergekit_definition("phi-1"), 2)
    with pytest.raises(ArchitectureError, match="layers differ"):
        infer_arch({"n_layer": 2, "vocab_size": VOCAB}, {n: _shape(n) for n in pre + layer + post}, "phi-1")


@pytest.fixture(scope="module")
def remote_pair(tmp_path_factory) -> tuple[Path, Path, Path, Path]:
    """Two pico llamas, and the same two dressed as a remote-code class with its modules."""
    root = tmp_path_factory.mktemp("remote")
    plain = make_family("llama", root / "plain", n_finetunes=1, seed=3)
    dressed = []
    for path in plain:
        model = copy_model(path, root / "dressed" / path.name)
        config = json.loads((model / "config.json").read_text())
        config.update(architectures=["ExaoneForCausalLM"], model_type="exaone", auto_map=AUTO_MAP)
        (model / "config.json").write_text(json.dumps(config))
        for module in ("configuration_exaone", "modeling_exaone"):
            (model / f"{module}.py").write_text(f"# {module} of the pico model\n")
        dressed.append(model)
    return (*plain, *dressed)


def _recipe(a: Path, b: Path) -> str:
    return f"merge_method: linear\nmodels:\n  - {{model: {a}, parameters: {{weight: 0.3}}}}\n  - {{model: {b}, parameters: {{weight: 0.7}}}}\ndtype: float32\n"


def test_remote_code_is_refused_without_the_flag(remote_pair, capsys, tmp_path):
    _, _, a, b = remote_pair
    merge_fails(capsys, tmp_path, _recipe(a, b), "ExaoneForCausalLM", "modeling_exaone.py", "--trust-remote-code")
    code, out, err = cli(capsys, "plan", write_recipe(tmp_path, _recipe(a, b), "plan.yml"))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--trust-remote-code" in err


def test_remote_code_merges_from_tensor_names_with_the_flag(remote_pair, capsys, tmp_path):
    plain_a, plain_b, a, b = remote_pair
    out, reference = tmp_path / "out", tmp_path / "plain"
    code, _, err = cli(capsys, "merge", write_recipe(tmp_path, _recipe(a, b)), out, "--quiet", "--trust-remote-code")
    assert code == 0, err
    assert "inferred from its tensor names" in err
    merge(_recipe(plain_a, plain_b), reference)
    got, want = output_tensors(out), output_tensors(reference)
    assert set(got) == set(want) and all(torch.equal(got[n], want[n]) for n in want)
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"] == AUTO_MAP and config["architectures"] == ["ExaoneForCausalLM"]
    for module in ("configuration_exaone", "modeling_exaone"):
        assert (out / f"{module}.py").read_text() == (a / f"{module}.py").read_text()


def test_lineages_refuse_the_flag(remote_pair, capsys, tmp_path):
    _, _, a, b = remote_pair
    lineage = f"name: one\n{_recipe(a, b)}---\nname: two\n{_recipe(a, b).replace(str(b), 'one')}"
    out = tmp_path / "out"
    code, stdout, err = cli(capsys, "merge", write_recipe(tmp_path, lineage), out, "--quiet", "--trust-remote-code")
    assert code == 2 and "single recipes" in err and len(err.strip().splitlines()) == 1
    assert_nothing_written(out)
