"""Identities every merge method must satisfy, independent of any reference tool."""

from __future__ import annotations

import pytest
import torch
from calls import call

from mergesmith.errors import ConfigError
from mergesmith.execute.runner import generator_for
from mergesmith.methods.registry import get_method
from mergesmith.methods.sparsify import magnitude, random


def _rand(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def gta(method, tensors, weights, densities, **shared):
    per = {"weight": dict(enumerate(weights, 1)), "density": dict(enumerate(densities, 1))}
    return call(method, tensors, 0, shared, per)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_slerp_endpoints_are_the_inputs(dtype):
    a, b = _rand(8, 16, seed=1, dtype=dtype), _rand(8, 16, seed=2, dtype=dtype)
    at = lambda t: call("slerp", [a, b], 0, {"t": t})
    assert torch.allclose(at(0.0).float(), a.float(), atol=1e-2 if dtype != torch.float32 else 1e-6)
    assert torch.allclose(at(1.0).float(), b.float(), atol=1e-2 if dtype != torch.float32 else 1e-6)
    assert at(0.5).dtype == dtype


def test_slerp_keeps_norm_of_orthogonal_unit_vectors():
    a = torch.tensor([1.0, 0.0])
    b = torch.tensor([0.0, 1.0])
    mid = call("slerp", [a, b], 0, {"t": 0.5})
    assert torch.allclose(mid, torch.tensor([2**-0.5, 2**-0.5]))  # lerp would give norm 0.707


def test_slerp_base_index_selects_t0_side():
    a, b = _rand(4, 4, seed=1), _rand(4, 4, seed=2)
    out = call("slerp", [b, a], 1, {"t": 0.0})
    assert torch.allclose(out, a)


def test_linear_one_hot_weight_returns_that_model():
    a, b = _rand(5, 7, seed=1), _rand(5, 7, seed=2)
    out = call("linear", [a, b], None, {"normalize": True}, {"weight": {0: 1.0, 1: 0.0}})
    assert torch.equal(out, a)


def test_ties_density_one_single_model_is_task_arithmetic():
    base, ft = _rand(6, 6, seed=1), _rand(6, 6, seed=2)
    ties = gta("ties", [base, ft], [0.7], [1.0], normalize=False)
    ta = gta("task_arithmetic", [base, ft], [0.7], [1.0])
    assert torch.equal(ties, ta)
    assert torch.allclose(ta, base + 0.7 * (ft - base))


def test_ties_sign_election_drops_disagreeing_entries():
    base = torch.zeros(3)
    a = torch.tensor([1.0, 2.0, -1.0])
    b = torch.tensor([-3.0, 1.0, -1.0])
    out = gta("ties", [base, a, b], [1.0, 1.0], [1.0, 1.0])
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
    out = call("slerp", [a, b], 0, {"t": 0.25})
    assert torch.allclose(out, 0.75 * a + 0.25 * b)
