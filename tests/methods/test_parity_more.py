"""Differential tests, end to end: every merge method of mergekit 0.1.5 beyond the first six
(and passthrough's layer stacks), run by both tools from the same recipe on the same pico models.

Each case runs on the llama family and on the qwen2 family, whose embeddings are tied (no
``lm_head`` in the files); filters and gradients put several variants of a method into one merge.
mergekit runs every selected case in one process (tests/parity_batch.py). Every output tensor
must be bit-exact or within 1 ulp. The random methods (della, della_linear) are compared at
densities 0 and 1, where their mask is certain; their random draws are compared with mergekit's
in test_methods_vs_mergekit.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from parity_batch import mergekit_reference, selected_cases
from parity_summary import attribute
from reference import compare, load_dir

from mergesmith.api import merge
from mergesmith.methods.registry import METHODS

pytestmark = pytest.mark.mergekit

FAMILIES = ("llama", "qwen2")


def _models(base, others, *params) -> str:
    """``models:`` with ``base`` first (None: no base) and ``others[i]`` getting ``params[i]``."""
    lines = ["models:"] + ([f"  - model: {base}"] if base else [])
    for i, path in enumerate(others):
        lines.append(f"  - model: {path}")
        if i < len(params):
            lines.append("    parameters:")
            lines += [f"      {line}" for line in params[i].strip("\n").splitlines()]
    if base:
        lines.append(f"base_model: {base}")
    return "\n".join(lines) + "\n"


# Density 1 keeps a delta whole, so della's mask is certain; weight 0 drops a delta (density 0
# would too, but a density is defined in (0, 1] and refused outside it).
DELLA_DENSITIES = (
    "weight:\n  - filter: self_attn\n    value: 0.0\n  - value: 0.7\ndensity: 1.0\nepsilon: 0.1",
    "weight:\n  - filter: mlp\n    value: 0.0\n  - value: [0.3, 0.6]\ndensity: 1.0",
)
# Per tensor class: flattened, row-wise and column-wise nuslerp in one merge.
NUSLERP_MODES = """parameters:
  nuslerp_flatten:
    - filter: self_attn
      value: false
    - filter: mlp
      value: false
    - value: true
  nuslerp_row_wise:
    - filter: mlp
      value: true
    - value: false
"""
MODEL_STOCK_FILTER_WISE = """parameters:
  filter_wise:
    - filter: mlp
      value: true
    - value: false
"""
# Two layer stacks, a scale on two projections of the first. Four layers out, as in: qwen2's
# config lists layer_types, which mergekit 0.1.5 leaves at the donor's length, and transformers
# then rejects mergekit's config when the layer count changes (see tests/arch/test_arch_merges.py).
STACK = """slices:
  - sources:
      - model: {ft1}
        layer_range: [0, 2]
        parameters:
          scale:
            - filter: o_proj
              value: 1.5
            - filter: down_proj
              value: 0.5
  - sources:
      - model: {ft2}
        layer_range: [1, 3]
merge_method: passthrough
dtype: bfloat16
"""


@dataclass(frozen=True)
class Case:
    method: str
    what: str  # the variant, for the parity label
    recipe: Callable[[list[Path]], str]  # [base, ft1, ft2] -> recipe
    ref_dtype: torch.dtype | None = None  # the dtype mergekit writes when it is not ours


CASES = {
    "breadcrumbs": Case(
        "breadcrumbs",
        "bf16",
        lambda f: (
            _models(
                f[0],
                f[1:],
                "weight: 0.6\ndensity: [0.3, 0.9]\ngamma: 0.02",
                "weight: [0.2, 0.7]\ndensity: 0.5",  # gamma: the default 0.01
            )
            + "merge_method: breadcrumbs\nparameters: {rescale: true, lambda: 0.9}\ndtype: bfloat16\n"
        ),
    ),
    "breadcrumbs_ties": Case(
        "breadcrumbs_ties",
        "bf16",
        lambda f: (
            _models(
                f[0],
                f[1:],
                "weight: 0.6\ndensity: [0.3, 0.9]\ngamma: 0.05",
                "weight: 0.5\ndensity: 0.5\ngamma: 0.0",
            )
            + "merge_method: breadcrumbs_ties\nparameters: {normalize: true, int8_mask: true}\ndtype: bfloat16\n"
        ),
    ),
    "della": Case(
        "della",
        "bf16 (density 0/1)",
        lambda f: (
            _models(f[0], f[1:], *DELLA_DENSITIES) + "merge_method: della\nparameters: {lambda: 1.2}\ndtype: bfloat16\n"
        ),
    ),
    "della_linear": Case(
        "della_linear",
        "fp32 (density 0/1)",
        lambda f: _models(f[0], f[1:], *DELLA_DENSITIES) + "merge_method: della_linear\ndtype: float32\n",
    ),
    "model_stock": Case(
        "model_stock",
        "bf16 (filter_wise on mlp only)",
        lambda f: _models(f[0], f[1:]) + "merge_method: model_stock\n" + MODEL_STOCK_FILTER_WISE + "dtype: bfloat16\n",
    ),
    "nuslerp-base": Case(
        "nuslerp",
        "with base bf16 (flat/rows/columns)",
        lambda f: (
            _models(f[0], f[1:], "weight: [0.2, 0.8]", "weight: 0.5")
            + "merge_method: nuslerp\n"
            + NUSLERP_MODES
            + "dtype: bfloat16\n"
        ),
    ),
    "nuslerp": Case(
        "nuslerp",
        "no base fp32 (flat/rows/columns)",
        lambda f: (
            _models(None, f[1:], "weight: 0.3", "weight: [0.9, 0.1]")
            + "merge_method: nuslerp\n"
            + NUSLERP_MODES
            + "dtype: float32\n"
        ),
    ),
    "multislerp-base": Case(
        "multislerp",
        "with base bf16",
        lambda f: (
            _models(f[0], f[1:], "weight: 0.3", "weight: [0.4, 1.0]") + "merge_method: multislerp\ndtype: bfloat16\n"
        ),
    ),
    "multislerp": Case(
        "multislerp",
        "no base bf16 (three points)",
        lambda f: (
            _models(None, f, "weight: 0.2", "weight: 0.3", "weight: 0.5")
            + "merge_method: multislerp\nparameters: {normalize_weights: false}\ndtype: bfloat16\n"
        ),
    ),
    # karcher ignores base_model: the base is one more point of the mean.
    "karcher": Case(
        "karcher",
        "fp32",
        lambda f: (
            _models(f[0], f[1:]) + "merge_method: karcher\nparameters: {max_iter: 20, tol: 1.0e-6}\ndtype: float32\n"
        ),
    ),
    "sce": Case(
        "sce",
        "bf16",
        lambda f: (
            _models(f[0], f[1:])
            + "merge_method: sce\nparameters: {select_topk: [0.2, 1.0], int8_mask: true}\ndtype: bfloat16\n"
        ),
    ),
    "nearswap": Case(
        "nearswap",
        "bf16",
        lambda f: _models(f[0], f[2:]) + "merge_method: nearswap\nparameters: {t: [0.001, 0.02]}\ndtype: bfloat16\n",
    ),
    "arcee_fusion": Case(
        "arcee_fusion",
        "bf16",
        lambda f: _models(f[0], f[1:2]) + "merge_method: arcee_fusion\ndtype: bfloat16\nout_dtype: bfloat16\n",
    ),
    "ram": Case(
        "ram",
        "fp16",
        lambda f: _models(f[0], f[1:]) + "merge_method: ram\nparameters: {epsilon: 0.015}\ndtype: float16\n",
    ),
    # Without out_dtype mergekit writes ramplus_tl (and arcee_fusion) in fp32 for bf16 inputs,
    # while its config.json says bfloat16; mergesmith writes bf16, mergekit's values rounded once.
    "ramplus_tl": Case(
        "ramplus_tl",
        "bf16 (mergekit fp32, rounded)",
        lambda f: (
            _models(f[0], f[1:]) + "merge_method: ramplus_tl\nparameters: {epsilon: 0.02, r: 0.5}\ndtype: bfloat16\n"
        ),
        ref_dtype=torch.float32,
    ),
    "passthrough": Case("passthrough", "bf16 (two layer stacks, scaled)", lambda f: STACK.format(ft1=f[1], ft2=f[2])),
}
CASE_IDS = [f"{kind}-{name}" for name in CASES for kind in FAMILIES]


def _split(case_id: str) -> tuple[str, Case]:
    kind, name = case_id.split("-", 1)
    return kind, CASES[name]


@pytest.fixture(scope="module")
def recipes(llama_family, qwen2_family) -> dict[str, str]:
    fams = {"llama": llama_family, "qwen2": qwen2_family}
    return {case_id: _split(case_id)[1].recipe(fams[_split(case_id)[0]]) for case_id in CASE_IDS}


@pytest.fixture(scope="module")
def reference(request, recipes, tmp_path_factory):
    """mergekit's outputs for every selected case of this module, from one mergekit process."""
    return mergekit_reference(recipes, selected_cases(request), tmp_path_factory.mktemp("mergekit-more"))


@pytest.mark.parametrize("case", CASE_IDS)
def test_same_tensors_as_mergekit(case, recipes, reference, tmp_path, parity_log):
    kind, spec = _split(case)
    merge(recipes[case], tmp_path / "ours")
    ours, ref = load_dir(tmp_path / "ours"), reference.load(case)
    if spec.ref_dtype is not None:
        assert {t.dtype for t in ref.values()} == {spec.ref_dtype}, "mergekit no longer widens this method's output"
        ref = {name: t.to(ours[name].dtype) for name, t in ref.items() if name in ours}
    parity = compare(ours, ref)
    parity_log.append((f"{kind} {spec.method} {spec.what}", parity))
    assert not parity.missing and not parity.extra, (parity.missing, parity.extra)
    assert not parity.differing, parity.summary()
    if kind == "qwen2":  # tied: the output must not grow a head of its own
        assert "lm_head.weight" not in ours


def test_every_method_has_whole_merges_against_mergekit_on_llama_and_qwen2():
    """A method added to the registry needs a case here or in test_parity.py on both families."""
    import test_parity

    covered = {(c.method, kind) for c in CASES.values() for kind in FAMILIES}
    covered |= {(method, kind) for method, _ in test_parity.METHOD_CASES for kind in test_parity.MODEL_KINDS}
    covered |= {("slerp", kind) for kind in test_parity.RECIPE3_KINDS}
    from parity_summary import BEYOND_MERGEKIT

    theirs = set(METHODS) - set(BEYOND_MERGEKIT)
    missing = sorted({(method, kind) for method in theirs for kind in FAMILIES} - covered)
    assert not missing, f"no differential merge for (method, family): {missing}"
    # The variants issue 4 asks for by name: filter_wise both ways, nuslerp with and without base.
    assert "filter_wise" in CASES["model_stock"].recipe(["b", "x", "y"])
    assert "base_model" in CASES["nuslerp-base"].recipe(["b", "x", "y"])
    assert "base_model" not in CASES["nuslerp"].recipe(["b", "x", "y"])


def test_every_label_names_its_recipes_family_and_method():
    """The session summary counts merges per method by label (tests/parity_summary.py)."""
    import test_parity

    fams = {
        kind: [Path(f"/{kind}/base"), Path(f"/{kind}/ft1"), Path(f"/{kind}/ft2")] for kind in test_parity.MODEL_KINDS
    }
    labelled = list(test_parity.case_recipes(fams, Path("/llama48")).values())
    labelled += [(f"{kind} {c.method} {c.what}", c.recipe(fams[kind])) for c in CASES.values() for kind in FAMILIES]
    for label, recipe in labelled:
        who = attribute(label)
        assert who.method == yaml.safe_load(recipe)["merge_method"], label
        assert who.families and all(f"/{family}/" in recipe or f"/{family}\n" in recipe for family in who.families), (
            label
        )
