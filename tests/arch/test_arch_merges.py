"""The added architectures end to end: a slerp and a passthrough layer stack per family.

Each output must equal mergekit 0.1.5's on the same recipe (where mergekit reads the family),
repeat its sources' layers exactly (stack), and load with ``AutoModelForCausalLM`` with the
right number of layers. Gemma2 ties its head: the output must not grow an ``lm_head``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from arch_pico import NEW_KINDS, build_arch_model, make_arch_family
from mergekit_batch import run_mergekit_many
from pico import perturb_, save_model
from reference import compare, load_dir

from mergesmith.api import merge
from mergesmith.arch.spec import find_arch

LAYERS = 4
# Layer ranges of base, then ft1: "stack" gives 6 layers, "stack4" keeps 4.
STACKS = {"stack": ((0, 3), (1, 4)), "stack4": ((0, 2), (1, 3))}
# Qwen3 and Gemma2 configs list layer_types, which mergekit 0.1.5 leaves at the donor's length:
# transformers then rejects its output config when a stack changes the layer count, so mergekit
# is compared on "stack4" there.
WITH_LAYER_TYPES = ("qwen3", "gemma2")
MIXED = "qwen3-mixed-tie"  # qwen3 base with its own head + a fine-tune that ties it


def slerp_recipe(a: Path, b: Path) -> str:
    # The published slerp recipe (mergekit README), only names and layer counts changed.
    return f"""
slices:
  - sources:
      - model: {a}
        layer_range: [0, {LAYERS}]
      - model: {b}
        layer_range: [0, {LAYERS}]
merge_method: slerp
base_model: {a}
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - filter: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5
dtype: bfloat16
"""


def stack_recipe(a: Path, b: Path, method: str) -> str:
    (s0, e0), (s1, e1) = STACKS[method]
    return f"""
slices:
  - sources:
      - model: {a}
        layer_range: [{s0}, {e0}]
  - sources:
      - model: {b}
        layer_range: [{s1}, {e1}]
merge_method: passthrough
"""


CASES = [(kind, method) for kind in NEW_KINDS for method in ("slerp", "stack")] + [(MIXED, "slerp")]
CASES += [(kind, "stack4") for kind in WITH_LAYER_TYPES]


def mergekit_reads(kind: str, method: str) -> bool:
    # mergekit 0.1.5's gpt-neox file requires the attention.bias / masked_bias / rotary_emb.inv_freq
    # buffers that transformers no longer saves, so it refuses every current GPT-NeoX checkpoint.
    return kind != "gpt_neox" and not (kind in WITH_LAYER_TYPES and method == "stack")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """Families, recipes and mergesmith outputs for every case."""
    root = tmp_path_factory.mktemp("arch-merges")
    families = {kind: make_arch_family(kind, root / kind, seed=10 + i) for i, kind in enumerate(NEW_KINDS)}
    tied_ft = build_arch_model("qwen3", seed=10, variant="other_tie")
    perturb_(tied_ft, torch.Generator().manual_seed(7))
    families[MIXED] = [families["qwen3"][0], save_model(tied_ft, root / MIXED / "ft1")]
    return merge_cases(families, CASES, root)


def merge_cases(families: dict, cases, root: Path) -> dict:
    """mergesmith's output of each ``(kind, method)`` case: a slerp or a stack of the family's models,
    each family found by its data file (an inferred architecture fails the test)."""
    recipes = {(k, m): slerp_recipe(*families[k]) if m == "slerp" else stack_recipe(*families[k], m) for k, m in cases}
    outputs = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for case, recipe in recipes.items():
            outputs[case] = root / "ours" / "-".join(case)
            merge(recipe, outputs[case])
    inferred = [str(w.message) for w in caught if "no definition" in str(w.message)]
    assert not inferred, f"a shipped architecture was not found: {inferred}"
    return {"families": families, "recipes": recipes, "outputs": outputs, "root": root}


def mergekit_outputs(runs: dict, cases) -> dict:
    """mergekit's outputs of the same recipes for ``cases`` (one subprocess for all)."""
    jobs = {case: runs["root"] / "ref" / "-".join(case) for case in cases}
    failures = run_mergekit_many([(runs["recipes"][case], out) for case, out in jobs.items()])
    assert not failures, failures
    return jobs


@pytest.fixture(scope="module")
def reference(runs) -> dict:
    return mergekit_outputs(runs, [case for case in CASES if mergekit_reads(*case)])


@pytest.mark.mergekit
@pytest.mark.parametrize("kind,method", [c for c in CASES if mergekit_reads(*c)])
def test_same_tensors_as_mergekit(kind, method, runs, reference, parity_log):
    parity = compare(load_dir(runs["outputs"][kind, method]), load_dir(reference[kind, method]))
    parity_log.append((f"arch {kind} {method}", parity))
    assert parity.matches and parity.within_ulp == 0, parity.summary()


@pytest.mark.parametrize("kind", NEW_KINDS)
def test_stack_repeats_source_layers(kind, runs):
    """Layer i of the output is the source layer it came from; embeddings first slice, head last."""
    assert_stack_repeats_source_layers(runs, kind, "stack")


def assert_stack_repeats_source_layers(runs: dict, kind: str, method: str) -> None:
    """The stack's output: the base's embeddings, the fine-tune's head, and each output layer the
    source layer it was planned from (``STACKS[method]``: a base range, then a fine-tune range)."""
    base, ft = (load_dir(p) for p in runs["families"][kind])
    out = load_dir(runs["outputs"][kind, method])
    spec = find_arch(json.loads((runs["families"][kind][0] / "config.json").read_text()))
    origins = [(base, i) for i in range(*STACKS[method][0])] + [(ft, i) for i in range(*STACKS[method][1])]
    expected = {w.name: base[w.name] for w in spec.pre}
    expected |= {w.name: ft[w.name] for w in spec.post if w.name in ft}
    for j, (source, i) in enumerate(origins):
        expected |= {w.at_layer(j).name: source[w.at_layer(i).name] for w in spec.layer if w.at_layer(i).name in source}
    assert set(out) == set(expected)
    assert all(torch.equal(out[name], tensor) for name, tensor in expected.items())


@pytest.mark.parametrize("kind,method", CASES)
def test_output_loads_with_transformers(kind, method, runs):
    from transformers import AutoModelForCausalLM

    path = runs["outputs"][kind, method]
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    layers = LAYERS if method == "slerp" else sum(e - s for s, e in STACKS[method])
    assert model.config.num_hidden_layers == layers
    blocks = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == layers]
    assert blocks, f"no stack of {layers} blocks in {type(model).__name__}"
    with torch.no_grad():
        logits = model(torch.tensor([[1, 5, 9, 2]])).logits
    assert logits.shape == (1, 4, model.config.vocab_size) and torch.isfinite(logits).all()


@pytest.mark.parametrize("method", ["slerp", "stack"])
def test_gemma2_tied_head_is_not_written(method, runs):
    """mergekit #385: Gemma2 9.2B merges came out 10.2B with a copy of the embeddings as lm_head."""
    from transformers import AutoModelForCausalLM

    base = load_dir(runs["families"]["gemma2"][0])
    out = load_dir(runs["outputs"]["gemma2", method])
    assert "lm_head.weight" not in base and "lm_head.weight" not in out
    per_layer = sum(t.numel() for n, t in base.items() if ".layers.0." in n)
    layers = LAYERS if method == "slerp" else sum(e - s for s, e in STACKS[method])
    assert sum(t.numel() for t in out.values()) == sum(t.numel() for t in base.values()) + (layers - LAYERS) * per_layer
    model = AutoModelForCausalLM.from_pretrained(runs["outputs"]["gemma2", method])
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_tied_input_contributes_its_embeddings(runs):
    """A fine-tune without lm_head (tied) merges its embeddings into the other input's head."""
    base, ft = (load_dir(p) for p in runs["families"][MIXED])
    out = load_dir(runs["outputs"][MIXED, "slerp"])
    assert "lm_head.weight" in base and "lm_head.weight" not in ft
    assert "lm_head.weight" in out
    # t = 0.5 (fallback) between two different tensors: neither endpoint.
    head = out["lm_head.weight"].float()
    assert not torch.equal(head, base["lm_head.weight"].bfloat16().float())
    assert not torch.equal(head, ft["model.embed_tokens.weight"].bfloat16().float())
