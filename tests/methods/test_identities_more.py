"""Identities of the methods added for "every merge method", independent of mergekit."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from calls import call, params_for

from mergesmith.errors import ConfigError
from mergesmith.methods import sparsify
from mergesmith.methods.registry import METHODS


def _rand(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


run = call  # a method with its defaults, ``shared`` overrides and ``per[name][input index]``


# --- model_stock -------------------------------------------------------------------------


@pytest.mark.parametrize("filter_wise", [False, True])
def test_model_stock_of_identical_finetunes_returns_them(filter_wise):
    base, ft = _rand(8, 16, seed=1), _rand(8, 16, seed=2)
    out = run("model_stock", [base, ft, ft.clone(), ft.clone()], 0, {"filter_wise": filter_wise})
    assert torch.allclose(out, ft, atol=1e-6)  # cos θ = 1 gives t = 1


def test_model_stock_orthogonal_offsets_keep_the_base():
    base = _rand(4, seed=1)
    a, b = base + torch.tensor([1.0, 0, 0, 0]), base + torch.tensor([0, 2.0, 0, 0])
    assert torch.equal(run("model_stock", [base, a, b], 0), base)  # cos θ = 0 gives t = 0


def test_model_stock_singular_denominator_keeps_the_base():
    base, delta = _rand(16, seed=1), _rand(16, seed=2)
    # two opposite offsets: cos θ = -1, 1 + (k-1)·cos θ = 0: no finite estimate
    assert torch.equal(run("model_stock", [base, base + delta, base - delta], 0), base)


def test_model_stock_filter_wise_gives_each_row_its_own_t():
    base = torch.zeros(2, 3)
    a = torch.tensor([[1.0, 0, 0], [1.0, 0, 0]])
    b = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])  # row 0 agrees (t=1), row 1 orthogonal (t=0)
    out = run("model_stock", [base, a, b], 0, {"filter_wise": True})
    assert torch.allclose(out, torch.tensor([[1.0, 0, 0], [0, 0, 0]]))
    whole = run("model_stock", [base, a, b], 0)  # one t for the tensor: between 0 and 1
    assert 0 < whole[0, 0] < 1


# --- nuslerp -----------------------------------------------------------------------------

MODES = [{}, {"nuslerp_flatten": False}, {"nuslerp_flatten": False, "nuslerp_row_wise": True}]


@pytest.mark.parametrize("mode", MODES, ids=["flat", "rows", "columns"])
@pytest.mark.parametrize("with_base", [False, True])
def test_nuslerp_endpoints_are_the_models(mode, with_base):
    a, b, base = _rand(6, 10, seed=1), _rand(6, 10, seed=2), _rand(6, 10, seed=3)
    tensors, base_index = ([base, a, b], 0) if with_base else ([a, b], None)
    first, second = (1, 2) if with_base else (0, 1)
    at_a = run("nuslerp", tensors, base_index, mode, {"weight": {first: 1.0, second: 0.0}})
    at_b = run("nuslerp", tensors, base_index, mode, {"weight": {first: 0.0, second: 3.0}})
    assert torch.allclose(at_a, a, atol=1e-5) and torch.allclose(at_b, b, atol=1e-5)


def test_nuslerp_rows_mode_is_flat_per_row_and_columns_mode_is_rows_of_the_transpose():
    a, b = _rand(3, 5, seed=1), _rand(3, 5, seed=2)
    w = {"weight": {0: 1.0, 1: 2.0}}
    rows = run("nuslerp", [a, b], None, {"nuslerp_flatten": False}, w)
    for i in range(3):
        assert torch.allclose(rows[i], run("nuslerp", [a[i], b[i]], None, {}, w), atol=1e-6)
    columns = run("nuslerp", [a, b], None, {"nuslerp_flatten": False, "nuslerp_row_wise": True}, w)
    assert torch.allclose(columns, run("nuslerp", [a.T, b.T], None, {"nuslerp_flatten": False}, w).T, atol=1e-6)
    assert not torch.allclose(rows, columns)


def test_nuslerp_colinear_falls_back_to_lerp():
    a = _rand(12, seed=4)
    out = run("nuslerp", [a, 3 * a], None, {}, {"weight": {0: 3.0, 1: 1.0}})  # t = 0.25
    assert torch.allclose(out, 0.75 * a + 0.25 * 3 * a)


# --- multislerp, karcher -----------------------------------------------------------------


def test_multislerp_of_one_model_is_that_model():
    a, base = _rand(5, 7, seed=1), _rand(5, 7, seed=2)
    assert torch.equal(run("multislerp", [base, a], 0, {}, {"weight": {1: 0.3}}), a)
    assert torch.equal(run("multislerp", [a], None, {}, {"weight": {0: 0.3}}), a)


def test_multislerp_one_hot_weights_give_that_model_and_midpoint_keeps_norm():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    assert torch.allclose(run("multislerp", [a, b], None, {}, {"weight": {0: 1.0, 1: 0.0}}), a, atol=1e-6)
    mid = run("multislerp", [a, b], None, {}, {"weight": {0: 1.0, 1: 1.0}})
    assert torch.allclose(mid, torch.tensor([2**-0.5, 2**-0.5]), atol=1e-6)  # lerp would give norm 0.71


def test_multislerp_antipodal_models():
    a = _rand(6, seed=1)
    two = run("multislerp", [a, -a], None, {}, {"weight": {0: 1.0, 1: 1.0}})
    assert torch.equal(two, torch.zeros(6))  # two models: the lerp fallback
    with pytest.raises(ConfigError, match="multislerp: .* change the weights"):
        run("multislerp", [a, -a, a, -a], None, {}, {"weight": {i: 1.0 for i in range(4)}})


def test_karcher_identities():
    a, b = _rand(4, 6, seed=1), _rand(4, 6, seed=2)
    assert torch.equal(run("karcher", [a]), a)
    assert torch.allclose(run("karcher", [a, a.clone(), a.clone()]), a, atol=1e-6)
    x, y = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 2.0])
    assert torch.allclose(run("karcher", [x, y]), torch.tensor([2**0.5, 2**0.5]), atol=1e-5)  # geodesic midpoint
    assert torch.equal(run("karcher", [torch.zeros(3), torch.zeros(3)]), torch.zeros(3))
    # a zero input has no direction: the mean is the other's, scaled by the mean norm
    assert torch.allclose(run("karcher", [b, torch.zeros_like(b)]), b / 2, atol=1e-6)


# --- sce, nearswap, arcee_fusion, ram ----------------------------------------------------


def test_sce_identities():
    base, ft = _rand(6, 8, seed=1), _rand(6, 8, seed=2)
    assert torch.allclose(run("sce", [base, ft, ft.clone()], 0), ft, atol=1e-6)
    assert torch.equal(run("sce", [base, ft, _rand(6, 8, seed=3)], 0, {"select_topk": 0.0}), base)
    # select keeps only the entries where the models disagree most
    other = _rand(6, 8, seed=3)
    other[0, 0] += 50.0
    selected = run("sce", [base, ft, other], 0, {"select_topk": 1.5 / 48})  # k = 1 of 48
    changed = (selected != base).nonzero().tolist()
    assert changed == [[0, 0]]


def test_nearswap_limits():
    a, b = _rand(5, 5, seed=1), _rand(5, 5, seed=2)
    assert torch.equal(run("nearswap", [a, b], 0, {"t": 0.0}), a)
    assert torch.equal(run("nearswap", [a, b], 0, {"t": 1e9}), b)
    assert torch.equal(run("nearswap", [b, a], 1, {"t": 0.0}), a)  # the base index decides
    near = run("nearswap", [torch.tensor([0.0, 0.0]), torch.tensor([0.1, 4.0])], 0, {"t": 1.0})
    assert torch.allclose(near, torch.tensor([0.1, 1.0]))  # near: swapped; far: moved by t


def test_arcee_fusion_identities():
    base = _rand(8, 32, seed=1)
    assert torch.equal(run("arcee_fusion", [base, base.clone()], 0, generator=torch.Generator()), base)
    other = base.clone()
    other[3, 7] += 4.0  # one important update: it is taken whole
    out = run("arcee_fusion", [base, other], 0, generator=torch.Generator())
    assert torch.equal(out, other)


def test_ram_unique_updates_add_shared_ones_average():
    base = torch.zeros(4)
    a = torch.tensor([1.0, 0.0, 2.0, 0.0])
    b = torch.tensor([0.0, 3.0, 4.0, 0.0])
    assert torch.equal(run("ram", [base, a, b], 0), torch.tensor([1.0, 3.0, 3.0, 0.0]))
    # no shared entry: nothing to boost, ramplus_tl is ram
    c = torch.tensor([0.0, 3.0, 0.0, 5.0])
    assert torch.equal(run("ramplus_tl", [base, a, c], 0), run("ram", [base, a, c], 0))
    # model a shares 1 of 2 updates: rho = 1, unique updates scaled by 1 + r·min(rho, alpha)
    boosted = run("ramplus_tl", [base, a, b], 0, {"r": 0.5, "alpha": 0.4})
    assert torch.allclose(boosted, torch.tensor([1.2, 3.6, 3.0, 0.0]))


# --- breadcrumbs -------------------------------------------------------------------------


def test_breadcrumbs_without_outliers_is_magnitude_pruning():
    delta = _rand(32, 32, seed=5)
    for density in (0.1, 0.5, 0.9):
        assert torch.equal(
            sparsify.outliers(delta, density, False, gamma=0.0), sparsify.magnitude(delta, density, False)
        )


def test_breadcrumbs_drops_the_largest_and_the_smallest():
    delta = torch.arange(1.0, 11.0)  # magnitudes 1..10
    kept = sparsify.outliers(delta, 0.5, False, gamma=0.2)
    assert torch.equal(kept, torch.tensor([0, 0, 0, 4.0, 5, 6, 7, 8, 0, 0]))
    # density + gamma > 1: fewer outliers are dropped so that density survives
    assert int((sparsify.outliers(delta, 0.9, False, gamma=0.2) != 0).sum()) == 9


def test_breadcrumbs_negative_gamma_warns_names_method_and_parameter_and_drops_none():
    param = METHODS["breadcrumbs_ties"].param("gamma")
    with pytest.warns(
        UserWarning, match=r"breadcrumbs_ties: parameter gamma = -0.05 is negative; mergesmith removes no outliers"
    ):
        assert param.validate(-0.05) == -0.05
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        param.validate(0.0)  # no warning for valid values
    delta = _rand(20, 20, seed=6)
    assert torch.equal(
        sparsify.outliers(delta, 0.3, False, gamma=-0.05), sparsify.outliers(delta, 0.3, False, gamma=0.0)
    )


# --- parameters --------------------------------------------------------------------------


def test_paper_rescale_only_for_random_sparsifiers():
    for method in ("dare_ties", "dare_linear", "della", "della_linear"):
        assert METHODS[method].param("rescale").validate("paper") == "paper"
        assert METHODS[method].param("rescale").default is True  # mergekit's L1 rescale by default
    for method in ("ties", "breadcrumbs", "task_arithmetic"):
        with pytest.raises(ConfigError, match="parameter 'rescale' = 'paper'"):
            METHODS[method].param("rescale").validate("paper")


def test_della_epsilon_out_of_range_is_a_config_error():
    with pytest.raises(ConfigError, match=r"della: density 0.2 with epsilon 0.3 .* choose \|epsilon\| < 0.2"):
        sparsify.magprune(torch.ones(4, 4), 0.2, True, torch.Generator(), epsilon=0.3)
    params = params_for("della", 2, 0, per={"weight": {1: 1.0}, "density": {1: 0.9}, "epsilon": {1: 0.15}})
    with pytest.raises(ConfigError, match=r"recipe.yml: x: della: density 0.9 with epsilon 0.15"):
        METHODS["della"].check(params, "recipe.yml: x: ")
    METHODS["della"].check(
        params_for("della", 2, 0, per={"weight": {1: 1.0}, "density": {1: 1.0}}), ""
    )  # density 1: no draw
    assert math.isclose(METHODS["della"].param("epsilon").default, 0.15)
