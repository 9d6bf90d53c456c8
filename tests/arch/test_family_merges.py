"""The decoder families of issue 22 end to end: a slerp and a passthrough layer stack per family.

Every family's outputs load with ``AutoModelForCausalLM`` (with the stacked layer count) and the
stack repeats its source layers exactly; for the families mergekit 0.1.5 also defines
(``MERGEKIT_KINDS``) both outputs equal mergekit's bit for bit, all recipes run in one mergekit
subprocess. Families whose config lists one entry per layer are compared with mergekit on a stack
that keeps the layer count, as mergekit leaves such lists at the donor's length.
"""

from __future__ import annotations

import pytest
import torch
from families import FAMILY_KINDS, MERGEKIT_KINDS, family_config
from pico import perturb_, save_model
from reference import compare, load_dir
from test_arch_merges import STACKS, assert_stack_repeats_source_layers, merge_cases, mergekit_outputs

from mergesmith.arch.spec import find_arch

LAYERS = 4
# mergekit's falcon file requires lm_head (falcon ties by default): these pico falcons untie it.
UNTIED = {"falcon": False}
# Configs with per-layer lists: mergekit keeps them at the donor's length, so it is compared on stack4.
PER_LAYER_LISTS = ("cohere2", "lfm2")
# GPT-Neo rebuilds its per-layer list from attention_types and Llama 4 lists its expert layers by
# index (moe_layers), which the output config keeps as the donor has them: their stacks keep the
# layer count.
SAME_COUNT_ONLY = ("gpt_neo", "llama4_text")
CASES = [(k, "slerp") for k in FAMILY_KINDS] + [
    (k, "stack4" if k in SAME_COUNT_ONLY else "stack") for k in FAMILY_KINDS
]
CASES += [(k, "stack4") for k in MERGEKIT_KINDS if k in PER_LAYER_LISTS]


def mergekit_reads(kind: str, method: str) -> bool:
    return kind in MERGEKIT_KINDS and not (kind in PER_LAYER_LISTS and method == "stack")


def _build(kind: str, seed: int, perturb: int | None):
    from transformers import AutoModelForCausalLM

    config = family_config(kind, LAYERS, tie=UNTIED.get(kind))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    if perturb is not None:
        perturb_(model, torch.Generator().manual_seed(perturb))
    return model


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """Families (base + one fine-tune), recipes and mergesmith outputs for every case."""
    root = tmp_path_factory.mktemp("family-merges")
    families = {
        kind: [
            save_model(_build(kind, 100 + i, None), root / kind / "base"),
            save_model(_build(kind, 100 + i, 7 + i), root / kind / "ft1"),
        ]
        for i, kind in enumerate(FAMILY_KINDS)
    }
    return merge_cases(families, CASES, root)


@pytest.fixture(scope="module")
def reference(runs) -> dict:
    return mergekit_outputs(runs, [case for case in CASES if mergekit_reads(*case)])


@pytest.mark.mergekit
@pytest.mark.parametrize("kind,method", [c for c in CASES if mergekit_reads(*c)])
def test_family_same_tensors_as_mergekit(kind, method, runs, reference, parity_log):
    parity = compare(load_dir(runs["outputs"][kind, method]), load_dir(reference[kind, method]))
    parity_log.append((f"family {kind} {method}", parity))
    assert parity.matches and parity.within_ulp == 0, parity.summary()


@pytest.mark.parametrize("kind,method", [c for c in CASES if c[1] != "slerp"])
def test_family_stack_repeats_source_layers(kind, method, runs):
    assert_stack_repeats_source_layers(runs, kind, method)


@pytest.mark.parametrize("kind,method", CASES)
def test_family_output_loads_with_transformers(kind, method, runs):
    from transformers import AutoModelForCausalLM

    path = runs["outputs"][kind, method]
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    layers = LAYERS if method == "slerp" else sum(e - s for s, e in STACKS[method])
    spec = find_arch(model.config.to_dict())
    assert model.config.to_dict()[spec.num_layers_key] == layers
    blocks = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == layers]
    assert blocks, f"no stack of {layers} blocks in {type(model).__name__}"
    with torch.no_grad():
        logits = model(torch.tensor([[1, 5, 9, 2]])).logits
    assert logits.shape == (1, 4, model.config.vocab_size) and torch.isfinite(logits).all()
