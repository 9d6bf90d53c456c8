"""RegMean's solve (methods/regmean.py) on pico tensors: identities, deltas, the dead-feature rule,
agreement with FusionBench's reference formula, and the float32 fast path's error bound."""

from __future__ import annotations

import math

import pytest
import torch

from mergesmith.execute.method import merge_tensors
from mergesmith.methods.regmean import SPEC, _factor, fast_enough, regmean, regularized

F64 = torch.float64


def _params(weights, alpha=0.9, base_index=None):
    per_input = [{"weight": w} for w in weights]
    if base_index is not None:
        per_input.insert(base_index, {})
    return SPEC.params_type.build({"alpha": alpha}, per_input, base_index)


def _gram(seed: int, n: int = 6, tokens: int = 40) -> torch.Tensor:
    x = torch.randn(tokens, n, generator=torch.Generator().manual_seed(seed), dtype=F64)
    x[:, 1] *= 5  # uneven feature scales, so the off-diagonal matters
    return x.T @ x / tokens


def _weights(seed: int, out: int = 4, n: int = 6) -> torch.Tensor:
    return torch.randn(out, n, generator=torch.Generator().manual_seed(100 + seed), dtype=F64)


def _merge(weights, grams, scales, alpha=0.9, base=None):
    tensors = ([base] if base is not None else []) + list(weights) + list(grams)
    params = _params(scales, alpha, 0 if base is not None else None)
    return merge_tensors(SPEC, tensors, 0 if base is not None else None, params)


def test_one_model_is_itself():
    w = _weights(0)
    assert torch.allclose(_merge([w], [_gram(0)], [1.0]), w, rtol=0, atol=1e-12)


def test_alpha_one_with_equal_grams_is_the_mean():
    g = _gram(1)
    a, b = _weights(1), _weights(2)
    assert torch.allclose(_merge([a, b], [g, g], [1.0, 1.0], alpha=1.0), (a + b) / 2, rtol=0, atol=1e-12)


def test_identity_grams_give_the_weighted_linear_average():
    eye = torch.eye(6, dtype=F64)
    a, b = _weights(3), _weights(4)
    assert torch.allclose(_merge([a, b], [eye, 2 * eye], [1.0, 3.0], alpha=0.3), (a + 6 * b) / 7, atol=1e-12)


def test_alpha_zero_is_a_per_feature_average():
    """α = 0 keeps only diag(G): each input column is averaged with weights G_jj."""
    ga, gb = _gram(5), _gram(6)
    a, b = _weights(5), _weights(6)
    da, db = ga.diagonal(), gb.diagonal()
    expected = (a * da + b * db) / (da + db)
    assert torch.allclose(_merge([a, b], [ga, gb], [1.0, 1.0], alpha=0.0), expected, atol=1e-12)


def test_deltas_against_a_base_give_the_same_merge():
    base = _weights(7)
    a, b = base + 0.01 * _weights(8), base + 0.01 * _weights(9)
    grams = [_gram(8), _gram(9)]
    plain = _merge([a, b], grams, [1.0, 1.0])
    with_base = _merge([a, b], grams, [1.0, 1.0], base=base)
    assert torch.allclose(with_base, plain, rtol=0, atol=1e-12)
    assert not torch.equal(plain, (a + b) / 2)


def test_regmean_fits_both_models_outputs_better_than_the_average():
    """The solve minimises Σ_i ‖X_i Wᵀ − X_i W_iᵀ‖² (α = 1): no other W, the average included, does better."""
    gens = [torch.Generator().manual_seed(s) for s in (20, 21)]
    xs = [torch.randn(50, 6, generator=g, dtype=F64) for g in gens]
    ws = [_weights(20), _weights(21)]
    grams = [x.T @ x for x in xs]
    merged = regmean(ws, grams, [1.0, 1.0], alpha=1.0)
    loss = lambda w: sum(((x @ w.T - x @ wi.T) ** 2).sum() for x, wi in zip(xs, ws))
    assert loss(merged) < loss((ws[0] + ws[1]) / 2)
    for k in range(3):  # any perturbation costs more: the solve is the minimum
        step = 1e-3 * torch.randn(merged.shape, generator=torch.Generator().manual_seed(30 + k), dtype=F64)
        assert loss(merged + step) > loss(merged)


@pytest.mark.parametrize("out", [4, 20])  # 20 > 2·6: M⁻¹[G̃_1 …] is formed first
def test_a_feature_no_model_activated_takes_the_average_column(out):
    ga, gb = _gram(10), _gram(11)
    for g in (ga, gb):
        g[2, :] = 0
        g[:, 2] = 0
    a, b = _weights(10, out=out), _weights(11, out=out)
    merged = _merge([a, b], [ga, gb], [1.0, 3.0])
    assert torch.isfinite(merged).all()
    assert torch.allclose(merged[:, 2], (a[:, 2] + 3 * b[:, 2]) / 4, atol=1e-12)


def _fusion_bench_regmean(weights, grams, ratio):
    """Literal transcription of FusionBench's RegMean merge of one Linear weight
    (github.com/tanganke/fusion_bench, fusion_bench/method/regmean/regmean.py,
    ``reduce_non_diagonal_elements`` and ``merging_with_regmean_weights``, weight_transpose=True):
    G̃ = G * (diag(1 - r) + r), merged = transpose(inverse(Σ G̃) @ Σ (G̃ @ Wᵀ))."""
    reduced = []
    products = []
    for w, g in zip(weights, grams):
        diag_weights = torch.diag(torch.ones(g.shape[0], dtype=g.dtype) - ratio)
        non_diag_weights = torch.zeros_like(diag_weights).fill_(ratio)
        g = g * (diag_weights + non_diag_weights)
        reduced.append(g)
        products.append(torch.matmul(g, w.transpose(0, 1)))
    merged = torch.matmul(torch.inverse(sum(reduced)), sum(products))
    return merged.transpose(0, 1)


@pytest.mark.parametrize("out", [5, 30])
@pytest.mark.parametrize("alpha", [1.0, 0.9, 0.5, 0.1])
def test_matches_fusion_bench(alpha, out):
    """Both in float64 on the same 3 models; mergesmith solves by Cholesky around the first model
    (out 30 > 2·7: the stacked M⁻¹ G̃_i formed first), FusionBench inverts. The Grams here have
    condition numbers below 1e3, so the two agree to ~1e-13 relative; 1e-10 leaves room for the
    different factorisations and nothing for a different formula."""
    ws = [_weights(s, out=out, n=7) for s in (40, 41, 42)]
    gs = [_gram(s, n=7) for s in (40, 41, 42)]
    ours = _merge(ws, gs, [1.0, 1.0, 1.0], alpha=alpha)
    theirs = _fusion_bench_regmean(ws, gs, alpha)
    assert torch.allclose(ours, theirs, rtol=1e-10, atol=1e-12)


def test_float64_compute_is_the_float64_solve_and_alpha_one_never_fast():
    ws = [_weights(50), _weights(51)]
    gs = [_gram(50), _gram(51)]
    assert torch.equal(_merge(ws, gs, [1.0, 1.0]), regmean(ws, gs, [1.0, 1.0], 0.9))
    # α = 1: no bound on the conditioning, so float32 compute still solves in float64.
    out = _merge([w.float() for w in ws], [g.float() for g in gs], [1.0, 1.0], alpha=1.0)
    assert out.dtype == torch.float32
    exact = regmean([w.float().double() for w in ws], [g.float().double() for g in gs], [1.0, 1.0], 1.0)
    assert torch.equal(out, exact.float())


def test_a_singular_sum_of_grams_takes_the_minimum_norm_solution():
    """α = 1 with fewer tokens than features: Σ G_i is singular, the solve is least squares."""
    xs = [torch.randn(2, 6, generator=torch.Generator().manual_seed(s), dtype=F64) for s in (60, 61)]
    gs, ws = [x.T @ x for x in xs], [_weights(60), _weights(61)]
    expected = torch.linalg.pinv(gs[0] + gs[1]) @ (gs[0] @ ws[0].T + gs[1] @ ws[1].T)
    assert torch.allclose(regmean(ws, gs, [1.0, 1.0], 1.0), expected.T, atol=1e-9)


def test_models_that_agree_on_a_weight_give_it_back_without_a_solve():
    """A weight every model shares (a projection no adapter touched): the merge is that weight, bit
    for bit, through the planner's path with a base, and even for Grams no solve could use (NaN) or
    a singular sum (α = 1, fewer tokens than features), where least squares would project it."""
    base, shared = _weights(70), _weights(71)
    xs = [torch.randn(2, 6, generator=torch.Generator().manual_seed(s), dtype=F64) for s in (72, 73)]
    singular = [x.T @ x for x in xs]
    assert torch.equal(regmean([shared, shared], singular, [1.0, 1.0], 1.0), shared)
    nan = torch.full((6, 6), float("nan"), dtype=F64)
    assert torch.equal(regmean([shared, shared.clone()], [nan, nan], [1.0, 2.0], 0.9), shared)
    bf16 = [w.to(torch.bfloat16).float() for w in (base, shared)]  # a bf16 output's float32 path
    merged = _merge([bf16[1], bf16[1]], [g.float() for g in singular], [1.0, 1.0], base=bf16[0])
    assert merged.dtype == torch.float32 and torch.equal(merged, bf16[1])
    differing = regmean([shared, base], singular, [1.0, 1.0], 0.9)
    assert not torch.allclose(differing, shared) and not torch.allclose(differing, base)


def _ill_conditioned_gram(seed: int, n: int = 384, tokens: int = 4096) -> torch.Tensor:
    """Correlated features with a spectrum decaying over 3 decades and three channels 300x the
    rest (LLM activations' massive channels): condition number ~1e16 before regularisation."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(n, n, generator=g, dtype=F64) * torch.logspace(0, -3, n, dtype=F64)[:, None]
    x = torch.randn(tokens, n, generator=g, dtype=F64) @ mix
    x[:, :3] *= 300
    return x.T @ x / tokens


@pytest.mark.parametrize("out", [96, 1500])  # the right-hand side first; M⁻¹ G̃ first
def test_fast_path_error_is_far_below_a_16_bit_outputs_rounding(out):
    """Float32 compute (the planner's choice for bf16/fp16 outputs): products and triangular solves
    in float32. Against the float64 solve on ill-conditioned Grams at the default α 0.9, the error
    is at most 1e-4 of the largest weight (measured 2e-5), 20x below bf16's half step (2^-9)."""
    gs = [_ill_conditioned_gram(s) for s in (1, 11)]
    g = torch.Generator().manual_seed(6)
    base = 0.02 * torch.randn(out, 384, generator=g, dtype=F64)
    deltas = [0.002 * torch.randn(out, 384, generator=g, dtype=F64) for _ in gs]
    models = [(base + d).float() for d in deltas]
    fast = _merge(models, [g.float() for g in gs], [1.0, 1.0], base=base.float())
    assert fast.dtype == torch.float32
    exact = regmean(
        [m.double() - base.float().double() for m in models], [g.float().double() for g in gs], [1.0, 1.0], 0.9
    )
    exact = exact + base.float().double()
    error = (fast.double() - exact).abs().max() / exact.abs().max()
    assert 1e-9 < error < 1e-4  # not the float64 path, and within the bound
    assert not torch.allclose(exact, (models[0].double() + models[1].double()) / 2, atol=1e-3)


@pytest.mark.parametrize("smallest, expected", [(1e-6, torch.float32), (3e-9, torch.float64), (1e-9, None)])
def test_a_float32_factorisation_that_rounding_breaks_is_redone_in_float64(smallest, expected):
    """A positive definite float32 matrix whose smallest eigenvalue is below float32 Cholesky's
    rounding (3e-9 of the largest) gets a float64 factor; an indefinite one (1e-9: the float32
    rounding of the matrix itself crosses zero) none, and the solve takes least squares."""
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(256, 256, generator=g, dtype=F64))
    spd = ((q * torch.logspace(0, math.log10(smallest), 256, dtype=F64)) @ q.T).float()
    assert (int(torch.linalg.cholesky_ex(spd)[1]) == 0) == (expected is torch.float32)
    factor = _factor(spd)
    if expected is None:
        assert factor is None and torch.linalg.eigvalsh(spd.double())[0] < 0
        return
    assert factor.dtype == expected
    assert torch.allclose(factor.double() @ factor.double().T, spd.double(), atol=1e-6)


def test_fast_path_bound_holds_and_excludes_alpha_one():
    """The Jacobi-scaled Σ G̃_i has condition number ≤ 1 + α·in/(1 − α) (what ``fast_enough`` uses)."""
    for alpha in (0.5, 0.9, 0.99):
        total = sum(regularized(_ill_conditioned_gram(s, n=64, tokens=256), alpha) for s in (3, 4))
        scale = total.diagonal().rsqrt()
        eig = torch.linalg.eigvalsh(total * scale[:, None] * scale[None, :])
        assert eig[-1] / eig[0] <= 1 + alpha * 64 / (1 - alpha)
    assert fast_enough(0.9, 5632) and fast_enough(0.9, 14336)
    assert not fast_enough(1.0, 8) and not fast_enough(0.99999, 14336)
