"""Differential tests: mergesmith and mergekit 0.1.5 run the same recipe on the same pico models.

Every output tensor must be bit-exact or within one unit in the last place of the output
dtype; the counts are collected for the session summary (see conftest.py). mergekit runs every
selected case of this module in one process (tests/parity_batch.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from parity_batch import mergekit_reference, selected_cases
from recipes import frankenmerge_recipe, models_recipe, slerp_recipe
from reference import compare, load_dir

from mergesmith.api import merge
from mergesmith.api import plan as mergesmith_plan

pytestmark = pytest.mark.mergekit


def _check(case: str, cases, reference, tmp_path: Path, parity_log):
    label, recipe = cases[case]
    merge(recipe, tmp_path / "ours")
    parity = compare(load_dir(tmp_path / "ours"), reference.load(case))
    parity_log.append((label, parity))
    assert not parity.missing and not parity.extra, (parity.missing, parity.extra)
    assert not parity.differing, parity.summary() + f" differing: {parity.differing[:5]}"
    return parity


METHOD_CASES = [
    ("linear", "parameters: {normalize: true}\n"),
    ("task_arithmetic", "parameters: {lambda: 0.8}\n"),
    # tie_break: mergekit reproduces mergekit's unstable-sort choice among entries tied at the
    # density threshold (common in bf16); the default rule is checked in test_ties_default_tie_rule.
    ("ties", "parameters: {normalize: true, int8_mask: true, tie_break: mergekit}\n"),
    ("ties", "parameters: {normalize: false, rescale: true, lambda: 1.3, tie_break: mergekit}\n"),
    # DARE is random; density 1 makes it deterministic, so both tools must agree exactly.
    ("dare_ties", "parameters: {normalize: true, int8_mask: true, density: 1.0}\n"),
    ("dare_linear", "parameters: {rescale: true, density: 1.0}\n"),
]


# Where each case runs: every pico kind for the first methods, the tied llama/qwen2 pair elsewhere.
MODEL_KINDS = ("llama", "mistral", "qwen2", "phi2", "gemma3")
RECIPE3_KINDS = ("llama", "qwen2", "gemma3")
TIE_RULE_KINDS = ("llama", "qwen2")
MIRRORED = dict(attn="[1, 0.7, 0.3, 0.5, 0]", mlp="[0, 0.3, 0.7, 0.5, 1]")


def _method_recipe(kind: str, method: str, extra: str, fam: list[Path]) -> str:
    if method.startswith("dare"):
        # per-model density would override the global 1.0: keep only weights
        recipe = models_recipe(method, fam, "bfloat16", extra)
        return recipe.replace("density: [0.3, 0.8]", "density: 1.0").replace("density: 0.55", "density: 1.0")
    return models_recipe(method, fam, "float32" if kind == "phi2" else "bfloat16", extra)


def case_recipes(families: dict[str, list[Path]], llama48: Path) -> dict[str, tuple[str, str]]:
    """Case id -> (parity label: family first, then method; recipe)."""
    phi2, mistral = families["phi2"], families["mistral"]
    cases = {
        "recipe1-phi2": ("phi2 slerp recipe 1 fp16", slerp_recipe(phi2[0], phi2[1], 4, "float16")),
        "recipe2-mistral": ("mistral slerp recipe 2 bf16", slerp_recipe(mistral[0], mistral[1], 4, "bfloat16")),
        "recipe4-llama48": ("llama48 passthrough recipe 4 (47 layers)", frankenmerge_recipe(llama48)),
        "out-dtype-llama": (
            "llama task_arithmetic float32 -> out_dtype bfloat16",
            models_recipe("task_arithmetic", families["llama"], "float32", "out_dtype: bfloat16\n"),
        ),
    }
    for kind in RECIPE3_KINDS:
        fam = families[kind]
        recipe = slerp_recipe(fam[0], fam[1], 4, "bfloat16", **MIRRORED)
        cases[f"recipe3-{kind}"] = (f"{kind} slerp recipe 3 (mirrored)", recipe)
    for kind in MODEL_KINDS:
        for i, (method, extra) in enumerate(METHOD_CASES):
            cases[f"{kind}-{method}-{i}"] = (f"{kind} {method}", _method_recipe(kind, method, extra, families[kind]))
    for kind in TIE_RULE_KINDS:
        recipe = models_recipe("ties", families[kind], "bfloat16", "parameters: {normalize: true}\n")
        cases[f"tie-rule-{kind}"] = (f"{kind} ties default tie rule", recipe)
    return cases


@pytest.fixture(scope="module")
def cases(families, llama48) -> dict[str, tuple[str, str]]:
    return case_recipes(families, llama48)


@pytest.fixture(scope="module")
def reference(request, cases, tmp_path_factory):
    """mergekit's outputs for every selected case of this module, from one mergekit process."""
    recipes = {case: recipe for case, (_, recipe) in cases.items()}
    return mergekit_reference(recipes, selected_cases(request), tmp_path_factory.mktemp("mergekit-parity"))


@pytest.mark.parametrize("case", ["recipe1-phi2", "recipe2-mistral"] + [f"recipe3-{k}" for k in RECIPE3_KINDS])
def test_published_slerp_recipes(case, cases, reference, tmp_path, parity_log):
    _check(case, cases, reference, tmp_path, parity_log)


@pytest.mark.parametrize("case", ["recipe4-llama48"])
def test_recipe4_frankenmerge_47_layers(case, cases, reference, tmp_path, parity_log):
    parity = _check(case, cases, reference, tmp_path, parity_log)
    # embed, 47 layers x 9 tensors, final norm, lm_head
    assert parity.exact + parity.within_ulp == 1 + 47 * 9 + 2


METHOD_CASE_IDS = [f"{kind}-{method}-{i}" for kind in MODEL_KINDS for i, (method, _) in enumerate(METHOD_CASES)]


@pytest.mark.parametrize("case", METHOD_CASE_IDS)
def test_models_methods(case, cases, reference, tmp_path, parity_log):
    _check(case, cases, reference, tmp_path, parity_log)


def _threshold_ties(base: torch.Tensor, ft: torch.Tensor, density: float) -> torch.Tensor:
    """Entries of |ft - base| equal to the k-th largest: where tie rules may choose differently."""
    magnitude = (ft - base).abs().reshape(-1).float()
    k = max(1, int(density * magnitude.numel()))
    kth = torch.topk(magnitude, k).values[-1]
    return (magnitude == kth).reshape(base.shape)


@pytest.mark.parametrize("case", [f"tie-rule-{kind}" for kind in TIE_RULE_KINDS])
def test_ties_default_tie_rule_differs_only_at_threshold_ties(case, cases, reference, families, tmp_path, parity_log):
    """Default selection: exact top-k, ties lowest index first. Against mergekit every tensor is
    equal except where a model's delta sits exactly at its density threshold."""
    label, recipe = cases[case]
    base, ft1, ft2 = families[case.removeprefix("tie-rule-")]
    merge(recipe, tmp_path / "ours")
    ours, theirs = load_dir(tmp_path / "ours"), reference.load(case)
    b, x1, x2 = (load_dir(p) for p in (base, ft1, ft2))
    plan_ = mergesmith_plan(recipe)
    differing_entries = 0
    for name, ref_tensor in theirs.items():
        diff = ours[name] != ref_tensor
        if not diff.any():
            continue
        job = plan_.by_output()[name]
        densities = [job.params.per_input[i]["density"] for i in (1, 2)]
        src = [s.name for s in job.sources]
        ties = _threshold_ties(b[src[0]].bfloat16(), x1[src[1]].bfloat16(), densities[0]) | _threshold_ties(
            b[src[0]].bfloat16(), x2[src[2]].bfloat16(), densities[1]
        )
        assert not (diff & ~ties).any(), f"{name}: differences outside threshold ties"
        differing_entries += int(diff.sum())
    parity = compare(ours, theirs)
    parity_log.append((f"{label} ({differing_entries} entries at threshold ties)", parity))


@pytest.mark.parametrize("case", ["out-dtype-llama"])
def test_out_dtype_casts_after_computing_in_dtype(case, cases, reference, tmp_path, parity_log):
    parity = _check(case, cases, reference, tmp_path, parity_log)
    assert parity.exact == 1 + 4 * 9 + 2
    assert all(t.dtype == torch.bfloat16 for t in load_dir(tmp_path / "ours").values())
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["torch_dtype"] == "bfloat16"
