"""mergesmith/extract/svd.py: the rank rules and the factor split, on matrices with known spectra."""

from __future__ import annotations

import pytest
import torch

from mergesmith.extract.svd import Rank, choose_rank, decompose, spectrum


def with_spectrum(singular_values, shape=(200, 300), seed=0) -> torch.Tensor:
    """U·diag(σ)·Vᵀ with random orthonormal U, V: a matrix whose singular values are known."""
    g = torch.Generator().manual_seed(seed)
    k = len(singular_values)
    u = torch.linalg.qr(torch.randn(shape[0], k, generator=g, dtype=torch.float64)).Q
    v = torch.linalg.qr(torch.randn(shape[1], k, generator=g, dtype=torch.float64)).Q
    return (u * torch.tensor(singular_values, dtype=torch.float64)) @ v.T


def test_rank_rules_cap_epsilon_and_energy():
    s = torch.tensor([4.0, 3.0, 2.0, 1.0])  # energies 16, 9, 4, 1 of 30
    assert choose_rank(s, 30.0, Rank(2)) == 2
    assert choose_rank(s, 30.0, Rank(10)) == 4
    assert choose_rank(s, 30.0, Rank(10, sv_epsilon=1.5)) == 3
    assert choose_rank(s, 30.0, Rank(None, energy=16 / 30)) == 1  # exactly reached
    assert choose_rank(s, 30.0, Rank(None, energy=0.6)) == 2  # 25/30 is the first ≥ 0.6
    assert choose_rank(s, 30.0, Rank(None, energy=1.0)) == 4
    assert choose_rank(s, 30.0, Rank(1, energy=1.0)) == 1  # the cap still holds


def test_randomized_only_where_the_rank_is_far_below_the_shape():
    delta = with_spectrum([5.0, 4, 3, 2, 1]).float()
    u, s, vh = spectrum(delta, Rank(5), "t")  # 15 columns ≤ 0.25 · 200: randomized sketch
    assert len(s) == 15
    assert len(spectrum(delta, Rank(60), "t")[1]) == 200  # exact
    assert len(spectrum(delta, Rank(5, energy=0.9), "t")[1]) == 200  # energy needs the whole spectrum


@pytest.mark.parametrize("rank", [5, 60])  # randomized, exact
def test_a_low_rank_matrix_is_reproduced_with_balanced_factors(rank):
    delta = with_spectrum([5.0, 4, 3, 2, 1]).float()
    low = decompose(delta, Rank(rank), "t", torch.float32)
    assert low.rank == min(rank, 200)
    assert float((low.b @ low.a - delta).norm() / delta.norm()) < 1e-5
    assert low.kept_energy == pytest.approx(1.0, abs=1e-5) and low.rel_error < 1e-5
    # √Σ on each side: ‖B‖ = ‖A‖ = √(Σσ) = √15
    assert float(low.a.norm()) == pytest.approx(15**0.5, rel=1e-4) == float(low.b.norm())


def test_truncation_reports_energy_and_error_that_agree():
    sigma = [float(x) for x in torch.linspace(3, 0.1, 40)]
    delta = with_spectrum(sigma).float()
    low = decompose(delta, Rank(10), "t", torch.float32)
    kept = sum(x * x for x in sigma[:10]) / sum(x * x for x in sigma)
    # The randomized sketch nearly finds the top 10 (a slow linear decay is a hard case for it).
    assert 0.995 * kept <= low.kept_energy <= kept * (1 + 1e-6)
    assert low.rel_error == pytest.approx((1 - low.kept_energy) ** 0.5, rel=1e-3)


def test_the_sketch_is_seeded_by_the_tensor_name():
    delta = with_spectrum([float(x) for x in torch.linspace(3, 0.1, 40)]).float()
    one, again = (
        decompose(delta, Rank(5), "layers.0.q", torch.float32),
        decompose(delta, Rank(5), "layers.0.q", torch.float32),
    )
    assert torch.equal(one.a, again.a) and torch.equal(one.b, again.b)
    other = decompose(delta, Rank(5), "layers.1.q", torch.float32)
    assert not torch.equal(one.a, other.a)


def test_factors_are_stored_in_the_models_dtype():
    delta = with_spectrum([2.0, 1.0]).float()
    low = decompose(delta, Rank(2), "t", torch.bfloat16)
    assert low.a.dtype == low.b.dtype == torch.bfloat16
    assert low.rel_error < 1e-2  # the bf16 rounding of the factors, measured as stored
