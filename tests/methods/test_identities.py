"""Identities every merge method must satisfy, independent of any reference tool."""

from __future__ import annotations

import pytest
import torch

from mergesmith.errors import ConfigError
from mergesmith.execute.runner import generator_for
from mergesmith.methods.registry import METHODS, get_method
from mergesmith.methods.sparsify import magnitude, random
from mergesmith.methods.spec import MethodParams


def _rand(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def gta_params(method, n_models, weights, densities, **shared):
    spec = METHODS[method]
    values = {p.name: p.default for p in spec.params if p.scope.value == "shared"}
    values.update(shared)
    per_input = [{}] + [{"weight": w, "density": d} for w, d in zip(weights, densities)]
    return MethodParams(values, tuple(per_input[:n_models]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_slerp_endpoints_are_the_inputs(dtype):
    a, b = _rand(8, 16, seed=1, dtype=dtype), _rand(8, 16, seed=2, dtype=dtype)
    fn = METHODS["slerp"].fn
    at = lambda t: fn([a, b], 0, MethodParams({"t": t}, ({}, {})), None)
    assert torch.allclose(at(0.0).float(), a.float(), atol=1e-2 if dtype != torch.float32 else 1e-6)
    assert torch.allclose(at(1.0).float(), b.float(), atol=1e-2 if dtype != torch.float32 else 1e-6)
    assert at(0.5).dtype == dtype


def test_slerp_keeps_norm_of_orthogonal_unit_vectors():
    a = torch.tensor([1.0, 0.0])
    b = torch.tensor([0.0, 1.0])
    mid = METHODS["slerp"].fn([a, b], 0, MethodParams({"t": 0.5}, ({}, {})), None)
    assert torch.allclose(mid, torch.tensor([2**-0.5, 2**-0.5]))  # lerp would give norm 0.707


def test_slerp_base_index_selects_t0_side():
    a, b = _rand(4, 4, seed=1), _rand(4, 4, seed=2)
    out = METHODS["slerp"].fn([b, a], 1, MethodParams({"t": 0.0}, ({}, {})), None)
    assert torch.allclose(out, a)


def test_linear_one_hot_weight_returns_that_model():
    a, b = _rand(5, 7, seed=1), _rand(5, 7, seed=2)
    out = METHODS["linear"].fn([a, b], None, MethodParams({"normalize": True}, ({"weight": 1.0}, {"weight": 0.0})), None)
    assert torch.equal(out, a)


def test_ties_density_one_single_model_is_task_arithmetic():
    base, ft = _rand(6, 6, seed=1), _rand(6, 6, seed=2)
    ties = METHODS["ties"].fn([base, ft], 0, gta_params("ties", 2, [0.7], [1.0], normalize=False), None)
    ta = METHODS["task_arithmetic"].fn([base, ft], 0, gta_params("task_arithmetic", 2, [0.7], [1.0]), None)
    assert torch.equal(ties, ta)
    assert torch.allclose(ta, base + 0.7 * (ft - base))


def test_ties_sign_election_drops_disagreeing_entries():
    base = torch.zeros(3)
    a = torch.tensor([1.0, 2.0, -1.0])
    b = torch.tensor([-3.0, 1.0, -1.0])
    out = METHODS["ties"].fn([base, a, b], 0, gta_params("ties", 3, [1.0, 1.0], [1.0, 1.0]), None)
    # entry 0: sum -2 elects '-': only b counts (-3/1); entry 1: both +, mean 1.5; entry 2: both -, mean -1
    assert torch.allclose(out, torch.tensor([-3.0, 1.5, -1.0]))


def test_magnitude_keeps_the_largest_k():
    delta = torch.tensor([0.1, -5.0, 0.3, 4.0, -0.2])
    assert torch.equal(magnitude(delta, 0.4, False), torch.tensor([0.0, -5.0, 0.0, 4.0, 0.0]))
    kept = magnitude(delta, 0.4, True)
    assert torch.allclose(kept.abs().sum(), delta.abs().sum())


def test_dare_is_reproducible_by_seed_and_name_and_keeps_about_density():
    delta = _rand(200, 200, seed=3)
    first = random(delta, 0.3, False, generator_for(7, "model.layers.0.mlp.up_proj.weight"))
    again = random(delta, 0.3, False, generator_for(7, "model.layers.0.mlp.up_proj.weight"))
    other = random(delta, 0.3, False, generator_for(8, "model.layers.0.mlp.up_proj.weight"))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    kept = (first != 0).float().mean().item()
    assert abs(kept - 0.3) < 0.01  # 40000 Bernoulli draws: sd ~0.0023
    rescaled = random(delta, 0.3, True, generator_for(7, "x"))
    assert torch.allclose(rescaled.abs().sum(), delta.abs().sum(), rtol=1e-4)


def test_unknown_method_suggests_the_nearest():
    with pytest.raises(ConfigError, match="did you mean 'slerp'"):
        get_method("slurp")


def test_slerp_falls_back_to_lerp_for_collinear_inputs():
    a = _rand(16, seed=4)
    b = 2 * a  # cos θ = 1: slerp is undefined, lerp is the answer
    out = METHODS["slerp"].fn([a, b], 0, MethodParams({"t": 0.25}, ({}, {})), None)
    assert torch.allclose(out, 0.75 * a + 0.25 * b)
