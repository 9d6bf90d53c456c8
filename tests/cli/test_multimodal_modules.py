"""mergekit's ``modules:`` form: two fine-tunes of a VLM merged module by module.

Qwen2.5-VL, and Gemma 3 in the Hub's layout (``vision_tower.vision_model.*``), are compared with
mergekit 0.1.5 bit for bit: per-module parameters, gradients over each module's layers, a filter
that falls through to the recipe's value, and the plain ``models:`` form, which mergekit reads as every module with the same models.
mergekit 0.1.5 cannot read Qwen2-VL as transformers 5.25 saves it (it looks for a top-level
``num_hidden_layers``), Gemma 3 as transformers 5.25 saves it (``vision_tower.*``) or LLaVA (no
definition: it infers one module and then asks for ``text_decoder``), so there every output
tensor is checked against mergekit's slerp function on that tensor at its module's ``t``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from cli_helpers import copy_model, merge_fails, quiet_merge, rewrite_tensors
from parity_batch import run_mergekit_many
from pico import perturb_
from reference import compare, load_dir
from vlm_pico import VLM_KINDS, build_vlm, save_vlm

from mergesmith.arch.multimodal import find_vlm

T = {"text_decoder": 0.2, "vision_tower": 0.5, "multi_modal_projector": 0.8}


def modules_recipe(a: Path, b: Path, t=T, extra: str = "") -> str:
    body = "".join(
        f"  {name}:\n    models:\n      - model: {a}\n      - model: {b}\n    parameters:\n      t: {value}\n"
        for name, value in t.items()
    )
    return f"modules:\n{body}merge_method: slerp\nbase_model: {a}\ndtype: float32\n{extra}"


# Gradients across the language model's layers and the vision tower's blocks (mergekit plans
# Qwen2-VL's projector as two "layers" of the same tensors, so it keeps a scalar).
GRADIENTS = {"text_decoder": "[0, 1]", "vision_tower": "[0.2, 0.9]", "multi_modal_projector": 0.8}
FILTERED = {"text_decoder": "[{filter: self_attn, value: 0.1}]", "vision_tower": 0.5, "multi_modal_projector": 0.8}


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """kind -> (VLM, a fine-tune of it)."""
    root = tmp_path_factory.mktemp("vlm-pairs")
    out = {}
    for kind in VLM_KINDS:
        tuned = build_vlm(kind, seed=1)
        perturb_(tuned, torch.Generator().manual_seed(7))
        out[kind] = (save_vlm(build_vlm(kind, seed=1), root / kind / "a"), save_vlm(tuned, root / kind / "b"))
    return out


def _hub_layout(tensors: dict) -> None:
    """Gemma 3 as the Hub checkpoints name its vision tower (vision_tower.vision_model.*), which
    transformers 5.25 reads but no longer writes; mergekit 0.1.5's definition expects it."""
    for name in [n for n in tensors if n.startswith("vision_tower.")]:
        tensors["vision_tower.vision_model." + name[len("vision_tower.") :]] = tensors.pop(name)


@pytest.fixture(scope="module")
def differential(pairs, tmp_path_factory):
    """(kind, recipe label) -> (mergesmith output, mergekit output), for the families mergekit reads."""
    root = tmp_path_factory.mktemp("vlm-differential")
    hub = [copy_model(p, root / f"gemma3-hub-{p.name}") for p in pairs["gemma3"]]
    for path in hub:
        rewrite_tensors(path, _hub_layout)
    recipes = {}
    for kind, (a, b) in (("qwen2_5_vl", pairs["qwen2_5_vl"]), ("gemma3_hub", hub)):
        recipes[kind, "modules"] = modules_recipe(a, b)
        recipes[kind, "filter"] = modules_recipe(a, b, FILTERED, "parameters:\n  t: 0.6\n")
        recipes[kind, "gradient"] = modules_recipe(a, b, GRADIENTS)
        recipes[kind, "models"] = (
            f"models:\n  - model: {a}\n  - model: {b}\nmerge_method: slerp\nbase_model: {a}\n"
            "parameters: {t: 0.3}\ndtype: float32\n"
        )
    jobs = [(text, root / f"mk-{kind}-{label}") for (kind, label), text in recipes.items()]
    failures = run_mergekit_many(jobs)
    assert failures == {}, failures
    return {
        (kind, label): (quiet_merge(text, root / f"ms-{kind}-{label}"), root / f"mk-{kind}-{label}")
        for (kind, label), text in recipes.items()
    }


@pytest.mark.parametrize("kind", ["qwen2_5_vl", "gemma3_hub"])
@pytest.mark.parametrize("label", ["modules", "filter", "gradient", "models"])
def test_modules_match_mergekit(kind, label, differential, parity_log):
    ours, theirs = differential[kind, label]
    parity = compare(load_dir(ours), load_dir(theirs))
    parity_log.append((f"{kind} slerp {label}: form", parity))
    assert parity.missing == parity.extra == [] and parity.exact == len(load_dir(ours)), parity.summary()


def test_each_module_has_its_own_t(differential, pairs):
    """The filter recipe: text attention at 0.1, the rest of the text at the recipe's 0.6."""
    from mergekit.merge_methods.slerp import slerp

    a, b = (load_dir(p) for p in pairs["qwen2_5_vl"])
    ours = load_dir(differential["qwen2_5_vl", "filter"][0])
    for name, t in (("model.layers.1.self_attn.q_proj.weight", 0.1), ("model.layers.1.mlp.up_proj.weight", 0.6)):
        assert torch.equal(ours[name], slerp(torch.tensor([t]), a[name][None], b[name][None])[0]), name


@pytest.mark.parametrize("kind", ["qwen2_vl", "gemma3", "llava"])
def test_every_tensor_is_slerped_at_its_modules_t(kind, pairs, tmp_path):
    import json

    from mergekit.merge_methods.slerp import slerp
    from transformers import AutoModelForImageTextToText

    a, b = pairs[kind]
    out = quiet_merge(modules_recipe(a, b), tmp_path / "out")
    ours, ins_a, ins_b = load_dir(out), load_dir(a), load_dir(b)
    assert set(ours) == set(ins_a)
    layout = find_vlm(json.loads((a / "config.json").read_text())).layout(ins_a, kind)
    assert {layout.module(n) for n in ins_a} == set(T)
    for name in ours:
        t = torch.tensor([T[layout.module(name)]])
        assert torch.equal(ours[name], slerp(t, ins_a[name][None], ins_b[name][None])[0]), name
    model = AutoModelForImageTextToText.from_pretrained(out, dtype=torch.float32)
    assert torch.isfinite(model(input_ids=torch.tensor([[1, 5, 9, 42]])).logits).all()


def test_unknown_module_suggests_the_nearest(capsys, tmp_path, pairs):
    a, b = pairs["gemma3"]
    text = modules_recipe(a, b, {"text_decoder": 0.2, "vision_towr": 0.5, "multi_modal_projector": 0.8})
    merge_fails(capsys, tmp_path, text, "modules.vision_towr", "did you mean 'vision_tower'")


def test_a_missing_module_is_one_line(capsys, tmp_path, pairs):
    a, b = pairs["gemma3"]
    text = modules_recipe(a, b, {"text_decoder": 0.2, "vision_tower": 0.5})
    merge_fails(capsys, tmp_path, text, "modules lacks multi_modal_projector", "t: 0")


def test_an_unknown_key_inside_a_module_suggests_the_nearest(capsys, tmp_path, pairs):
    a, b = pairs["gemma3"]
    text = modules_recipe(a, b).replace("  vision_tower:\n    models:", "  vision_tower:\n    modles:", 1)
    merge_fails(capsys, tmp_path, text, "modules.vision_tower.modles", "did you mean 'models'")


def test_modules_with_a_text_model_is_one_line(capsys, tmp_path, pairs):
    from pico import make_pico

    a, _ = pairs["llava"]
    llama = make_pico("llama", tmp_path / "llama", seed=0, num_layers=2)
    merge_fails(capsys, tmp_path, modules_recipe(a, llama), "'modules:' merges llava models", str(llama))


def test_a_vision_layer_stack_is_refused(capsys, tmp_path, pairs):
    a, _ = pairs["llava"]
    text = (
        f"modules:\n  text_decoder:\n    models: [{{model: {a}}}]\n"
        f"  multi_modal_projector:\n    models: [{{model: {a}}}]\n"
        f"  vision_tower:\n    slices:\n      - sources: [{{model: {a}, layer_range: [0, 1]}}]\n"
        "merge_method: passthrough\n"
    )
    merge_fails(capsys, tmp_path, text, "modules.vision_tower makes 1 layers from 2", "text_decoder")
