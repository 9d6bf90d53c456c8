"""RegMean's solve (methods/regmean.py) on pico tensors: identities, deltas, the dead-feature rule,
and agreement with FusionBench's reference formula."""

from __future__ import annotations

import pytest
import torch

from mergesmith.execute.method import merge_tensors
from mergesmith.methods.regmean import SPEC, regmean

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


def test_a_feature_no_model_activated_takes_the_average_column():
    ga, gb = _gram(10), _gram(11)
    for g in (ga, gb):
        g[2, :] = 0
        g[:, 2] = 0
    a, b = _weights(10), _weights(11)
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


@pytest.mark.parametrize("alpha", [1.0, 0.9, 0.5, 0.1])
def test_matches_fusion_bench(alpha):
    """Both in float64 on the same 3 models; mergesmith solves by Cholesky, FusionBench inverts.
    The Grams here have condition numbers below 1e3, so the two agree to ~1e-13 relative; 1e-10
    leaves room for the different factorisations and nothing for a different formula."""
    ws = [_weights(s, out=5, n=7) for s in (40, 41, 42)]
    gs = [_gram(s, n=7) for s in (40, 41, 42)]
    ours = _merge(ws, gs, [1.0, 1.0, 1.0], alpha=alpha)
    theirs = _fusion_bench_regmean(ws, gs, alpha)
    assert torch.allclose(ours, theirs, rtol=1e-10, atol=1e-12)


def test_float32_inputs_come_back_float32_from_a_float64_solve():
    ws = [_weights(50).float(), _weights(51).float()]
    gs = [_gram(50).float(), _gram(51).float()]
    out = _merge(ws, gs, [1.0, 1.0])
    assert out.dtype == torch.float32
    exact = regmean([w.double() for w in ws], [g.double() for g in gs], [1.0, 1.0], 0.9)
    assert torch.equal(out, exact.float())
