"""Differential tests, end to end: every merge method of mergekit 0.1.5 beyond the first six,
run by both tools from the same recipe on the same pico models.

One merge per method (mergekit starts in ~5 s each), alternating the llama and the tied qwen2
family and the compute dtype; filters and gradients put several variants of a method into one
merge. Every output tensor must be bit-exact or within 1 ulp. The random methods (della,
della_linear) are compared at densities 0 and 1, where their mask is certain; their random
draws are compared with mergekit's in test_methods_vs_mergekit.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mergesmith.api import merge
from reference import compare, load_dir, run_mergekit

pytestmark = pytest.mark.mergekit


def _check(recipe: str, tmp_path: Path, parity_log, label: str, *, ref_dtype=None):
    """Merge with both tools; ``ref_dtype``: the dtype mergekit writes when it is not ours."""
    merge(recipe, tmp_path / "ours")
    ours = load_dir(tmp_path / "ours")
    ref = load_dir(run_mergekit(recipe, tmp_path / "ref"))
    if ref_dtype is not None:
        assert {t.dtype for t in ref.values()} == {ref_dtype}, "mergekit no longer widens this method's output"
        ref = {name: t.to(ours[name].dtype) for name, t in ref.items() if name in ours}
    parity = compare(ours, ref)
    parity_log.append((label, parity))
    assert not parity.missing and not parity.extra, (parity.missing, parity.extra)
    assert not parity.differing, parity.summary()
    return parity


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


def test_breadcrumbs(llama_family, tmp_path, parity_log):
    recipe = _models(
        llama_family[0], llama_family[1:],
        "weight: 0.6\ndensity: [0.3, 0.9]\ngamma: 0.02",
        "weight: [0.2, 0.7]\ndensity: 0.5",          # gamma: the default 0.01
    ) + "merge_method: breadcrumbs\nparameters: {rescale: true, lambda: 0.9}\ndtype: bfloat16\n"
    _check(recipe, tmp_path, parity_log, "llama breadcrumbs bf16")


def test_breadcrumbs_ties(qwen2_family, tmp_path, parity_log):
    recipe = _models(
        qwen2_family[0], qwen2_family[1:],
        "weight: 0.6\ndensity: [0.3, 0.9]\ngamma: 0.05",
        "weight: 0.5\ndensity: 0.5\ngamma: 0.0",
    ) + "merge_method: breadcrumbs_ties\nparameters: {normalize: true, int8_mask: true}\ndtype: bfloat16\n"
    _check(recipe, tmp_path, parity_log, "qwen2 breadcrumbs_ties bf16")


# Density 0 drops a delta, density 1 keeps it whole: della's mask is then certain.
DELLA_DENSITIES = (
    "weight: 0.7\ndensity:\n  - filter: self_attn\n    value: 0.0\n  - value: 1.0\nepsilon: 0.1",
    "weight: [0.3, 0.6]\ndensity:\n  - filter: mlp\n    value: 0.0\n  - value: 1.0",
)


def test_della(llama_family, tmp_path, parity_log):
    recipe = _models(llama_family[0], llama_family[1:], *DELLA_DENSITIES) + "merge_method: della\nparameters: {lambda: 1.2}\ndtype: bfloat16\n"
    _check(recipe, tmp_path, parity_log, "llama della bf16 (density 0/1)")


def test_della_linear(qwen2_family, tmp_path, parity_log):
    recipe = _models(qwen2_family[0], qwen2_family[1:], *DELLA_DENSITIES) + "merge_method: della_linear\ndtype: float32\n"
    _check(recipe, tmp_path, parity_log, "qwen2 della_linear fp32 (density 0/1)")


def test_model_stock(llama_family, tmp_path, parity_log):
    recipe = _models(llama_family[0], llama_family[1:]) + """merge_method: model_stock
parameters:
  filter_wise:
    - filter: mlp
      value: true
    - value: false
dtype: bfloat16
"""
    _check(recipe, tmp_path, parity_log, "llama model_stock bf16 (filter_wise on mlp)")


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


def test_nuslerp_with_base(llama_family, tmp_path, parity_log):
    recipe = _models(llama_family[0], llama_family[1:], "weight: [0.2, 0.8]", "weight: 0.5") + "merge_method: nuslerp\n" + NUSLERP_MODES
    _check(recipe + "dtype: bfloat16\n", tmp_path, parity_log, "llama nuslerp+base bf16 (flat/rows/columns)")


def test_nuslerp_without_base(qwen2_family, tmp_path, parity_log):
    recipe = _models(None, qwen2_family[1:], "weight: 0.3", "weight: [0.9, 0.1]") + "merge_method: nuslerp\n"
    _check(recipe + NUSLERP_MODES + "dtype: float32\n", tmp_path, parity_log, "qwen2 nuslerp fp32")


def test_multislerp_with_base(qwen2_family, tmp_path, parity_log):
    recipe = _models(qwen2_family[0], qwen2_family[1:], "weight: 0.3", "weight: [0.4, 1.0]") + "merge_method: multislerp\ndtype: bfloat16\n"
    _check(recipe, tmp_path, parity_log, "qwen2 multislerp+base bf16")


def test_multislerp_without_base(llama_family, tmp_path, parity_log):
    recipe = _models(None, llama_family, "weight: 0.2", "weight: 0.3", "weight: 0.5")  # no base: three points
    _check(recipe + "merge_method: multislerp\nparameters: {normalize_weights: false}\ndtype: bfloat16\n",
           tmp_path, parity_log, "llama multislerp bf16")


def test_karcher(qwen2_family, tmp_path, parity_log):
    # karcher ignores base_model: the base is one more point of the mean.
    recipe = _models(qwen2_family[0], qwen2_family[1:]) + "merge_method: karcher\nparameters: {max_iter: 20, tol: 1.0e-6}\ndtype: float32\n"
    _check(recipe, tmp_path, parity_log, "qwen2 karcher fp32")


def test_sce(llama_family, tmp_path, parity_log):
    recipe = _models(llama_family[0], llama_family[1:]) + "merge_method: sce\nparameters: {select_topk: [0.2, 1.0], int8_mask: true}\n"
    _check(recipe + "dtype: bfloat16\n", tmp_path, parity_log, "llama sce bf16")


def test_nearswap(qwen2_family, tmp_path, parity_log):
    recipe = _models(qwen2_family[0], qwen2_family[2:]) + "merge_method: nearswap\nparameters: {t: [0.001, 0.02]}\ndtype: bfloat16\n"
    _check(recipe, tmp_path, parity_log, "qwen2 nearswap bf16")


def test_arcee_fusion(llama_family, tmp_path, parity_log):
    recipe = _models(llama_family[0], llama_family[1:2]) + "merge_method: arcee_fusion\ndtype: bfloat16\nout_dtype: bfloat16\n"
    _check(recipe, tmp_path, parity_log, "llama arcee_fusion bf16")


def test_ram(qwen2_family, tmp_path, parity_log):
    recipe = _models(qwen2_family[0], qwen2_family[1:]) + "merge_method: ram\nparameters: {epsilon: 0.015}\ndtype: float16\n"
    _check(recipe, tmp_path, parity_log, "qwen2 ram fp16")


def test_ramplus_tl_writes_the_compute_dtype(llama_family, tmp_path, parity_log):
    # Without out_dtype mergekit writes ramplus_tl (and arcee_fusion) in fp32 for bf16 inputs,
    # while its config.json says bfloat16; mergesmith writes bf16, mergekit's values rounded once.
    recipe = _models(llama_family[0], llama_family[1:]) + "merge_method: ramplus_tl\nparameters: {epsilon: 0.02, r: 0.5}\ndtype: bfloat16\n"
    _check(recipe, tmp_path, parity_log, "llama ramplus_tl bf16 (mergekit fp32, rounded)", ref_dtype=torch.float32)
