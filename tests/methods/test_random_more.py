"""DELLA and DARE's rescale options: reproducible by seed, and statistically what they promise.

Every draw comes from an explicitly seeded generator, so these tests are deterministic; the
tolerances are still 5+ standard deviations of the quantity tested.
"""

from __future__ import annotations

import torch
from calls import call
from reference import load_dir

import mergesmith
from mergesmith.execute.runner import generator_for
from mergesmith.methods import sparsify


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def della_keep_probability(delta: torch.Tensor, density: float, epsilon: float) -> torch.Tensor:
    """The paper's p for each entry of a 2-D delta, from its magnitude rank within its row."""
    m = delta.shape[1]
    rank = delta.abs().argsort(dim=1).argsort(dim=1).double()  # 0 = smallest
    return (density - epsilon + 2 * epsilon * rank / (m - 1)).float()


def test_magprune_is_reproducible_by_generator_and_keeps_about_density():
    delta = _rand(200, 200, seed=1)
    first = sparsify.magprune(delta, 0.4, False, generator_for(3, "w"), epsilon=0.2)
    assert torch.equal(first, sparsify.magprune(delta, 0.4, False, generator_for(3, "w"), epsilon=0.2))
    assert not torch.equal(first, sparsify.magprune(delta, 0.4, False, generator_for(4, "w"), epsilon=0.2))
    kept = first != 0
    assert abs(kept.float().mean().item() - 0.4) < 0.015  # 40000 draws: sd 0.0024
    # larger magnitudes are kept more often: p rises linearly with the rank in the row
    p = della_keep_probability(delta, 0.4, 0.2)
    top = p > 0.4
    assert abs(kept[top].float().mean().item() - p[top].mean().item()) < 0.02  # sd 0.0035
    assert abs(kept[~top].float().mean().item() - p[~top].mean().item()) < 0.02
    assert kept[top].float().mean() - kept[~top].float().mean() > 0.15  # expected 0.2


def test_magprune_rescale_true_keeps_the_l1_norm_and_paper_divides_by_p():
    delta = _rand(64, 48, seed=2)
    l1 = sparsify.magprune(delta, 0.5, True, _gen(1), epsilon=0.1)
    assert torch.allclose(l1.abs().sum(), delta.abs().sum(), rtol=1e-5)
    paper = sparsify.magprune(delta, 0.5, "paper", _gen(1), epsilon=0.1)
    plain = sparsify.magprune(delta, 0.5, False, _gen(1), epsilon=0.1)
    kept = plain != 0
    assert torch.equal(paper != 0, kept)  # same draws, only the scale differs
    p = della_keep_probability(delta, 0.5, 0.1)
    assert torch.allclose(paper[kept], delta[kept] / p[kept], rtol=1e-6)


def test_magprune_paper_rescale_is_unbiased_and_l1_is_not():
    delta = _rand(32, 32, seed=3)
    draws = 200

    def relative_bias(rescale) -> float:
        mean = sum(sparsify.magprune(delta, 0.5, rescale, _gen(s), epsilon=0.2) for s in range(draws)) / draws
        return ((mean - delta).abs().sum() / delta.abs().sum()).item()

    # per entry sd of the mean: |δ|·sqrt((1-p)/(p·draws)), about |δ|/14 here: ~0.06 overall
    assert relative_bias("paper") < 0.1
    # one L1 factor for all entries over-weights the large ones, which DELLA keeps more often
    assert relative_bias(True) > 0.12
    assert relative_bias(False) > 0.3  # no rescale: about 1 - mean(p)


def test_magprune_treats_a_vector_as_one_row():
    delta = torch.linspace(1.0, 2.0, 101)  # ranks are the positions
    plain = sparsify.magprune(delta, 0.5, False, _gen(5), epsilon=0.3)
    paper = sparsify.magprune(delta, 0.5, "paper", _gen(5), epsilon=0.3)
    p = 0.2 + 0.6 * torch.arange(101) / 100
    kept = plain != 0
    assert torch.allclose(paper[kept], delta[kept] / p[kept], rtol=1e-6)


def test_dare_paper_rescale_divides_by_density_and_true_keeps_l1():
    delta = _rand(100, 100, seed=4)
    paper = sparsify.random(delta, 0.3, "paper", _gen(9))
    plain = sparsify.random(delta, 0.3, False, _gen(9))
    kept = plain != 0
    assert torch.equal(paper != 0, kept)
    assert torch.allclose(paper[kept], delta[kept] / 0.3)
    assert abs(kept.float().mean().item() - 0.3) < 0.025  # 10000 draws: sd 0.0046
    l1 = sparsify.random(delta, 0.3, True, _gen(9))
    assert torch.allclose(l1.abs().sum(), delta.abs().sum(), rtol=1e-5)
    # the L1 rescale is one factor for the whole tensor (|δ|₁ / |kept|₁), near but not 1/density
    factor = (delta.abs().sum() / plain.abs().sum()).item()
    assert torch.allclose(l1[kept], delta[kept] * factor, rtol=1e-5)
    assert abs(factor - 1 / 0.3) > 1e-3


def test_density_one_della_is_ties_and_della_linear_is_task_arithmetic():
    base, a, b = _rand(16, 16, seed=5), _rand(16, 16, seed=6), _rand(16, 16, seed=7)

    per = {"weight": {1: 0.7, 2: 0.4}, "density": {1: 1.0, 2: 1.0}}
    della = call("della", [base, a, b], 0, {}, per, _gen(0))
    ties = call("ties", [base, a, b], 0, {}, per)
    assert torch.equal(della, ties)
    linear = call("della_linear", [base, a, b], 0, {}, per, _gen(0))
    arithmetic = call("task_arithmetic", [base, a, b], 0, {}, per)
    assert torch.equal(linear, arithmetic)


def _della_recipe(fam, rescale="true") -> str:
    return f"""
models:
  - model: {fam[0]}
  - model: {fam[1]}
    parameters: {{weight: 0.6, density: 0.5}}
  - model: {fam[2]}
    parameters: {{weight: 0.4, density: 0.7, epsilon: 0.2}}
base_model: {fam[0]}
merge_method: della
parameters: {{rescale: {rescale}}}
dtype: float32
"""


def test_della_merge_same_seed_same_output_other_seed_differs(llama_family, tmp_path):
    recipe = _della_recipe(llama_family)
    mergesmith.merge(recipe, tmp_path / "a", seed=1)
    mergesmith.merge(recipe, tmp_path / "b", seed=1)
    mergesmith.merge(recipe, tmp_path / "c", seed=2)
    a, b, c = (load_dir(tmp_path / x) for x in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if k.endswith("proj.weight"))


def test_dare_paper_rescale_through_a_recipe(llama_family, tmp_path):
    recipe = f"""
models:
  - model: {llama_family[0]}
  - model: {llama_family[1]}
    parameters: {{weight: 1.0, density: 0.25}}
base_model: {llama_family[0]}
merge_method: dare_linear
parameters: {{rescale: paper}}
dtype: float32
"""
    mergesmith.merge(recipe, tmp_path / "out", seed=3)
    out, base, ft = (load_dir(p) for p in (tmp_path / "out", llama_family[0], llama_family[1]))
    name = "model.layers.2.mlp.up_proj.weight"
    merged, delta = out[name] - base[name], ft[name] - base[name]
    kept = merged != 0
    assert abs(kept.float().mean().item() - 0.25) < 0.03  # 8192 draws: sd 0.0048
    assert torch.allclose(merged[kept], delta[kept] / 0.25, rtol=1e-4, atol=1e-6)
