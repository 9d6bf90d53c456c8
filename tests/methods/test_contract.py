"""The one method contract (methods/steps.py) and the params types (methods/params.py)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from calls import call, params_for

from mergesmith import native
from mergesmith.methods import steps, threshold
from mergesmith.methods.registry import METHODS
from mergesmith.methods.steps import Combine, Pass

# Methods (with these parameters) whose one step needs every input whole, and why: the README
# and the issue list them; a method leaving this list must stream bit-exactly (the test below).
WHOLE = {
    "dare_ties",
    "dare_linear",
    "della",
    "della_linear",  # masks drawn for the whole shape
    "breadcrumbs",
    "breadcrumbs_ties",  # a sort of the whole delta
    "sce",  # variance top-k, mean squares of the tensor
    "nuslerp",
    "multislerp",
    "karcher",  # whole-tensor / row angles, iterations
    "arcee_fusion",  # row softmax, a sample of the tensor
    "tsv",
    "iso_c",
    "iso_cts",  # SVDs of the whole deltas
    "regmean",  # a linear solve with the whole Gram matrices
}
PER = {"weight": {0: 0.5, 1: 0.3, 2: 0.4}, "density": {1: 0.45, 2: 0.6}}
SHARED = {"t": 0.3, "epsilon": 0.01, "r": 0.5}


def _form(method: str) -> tuple[int, int | None]:
    """How many inputs a call gives the method, and where its base is."""
    spec = METHODS[method]
    return (2 if spec.max_inputs == 2 else 3), (0 if spec.base.value != "ignored" else None)


def _steps(method: str, **shared):
    count, base = _form(method)
    return METHODS[method].steps(params_for(method, count, base, {**SHARED, **shared}, PER))


def test_params_type_has_typed_fields_a_per_input_tuple_and_recipe_names():
    params = params_for("ties", 3, 0, {"lambda": 0.8}, PER)
    assert type(params).__name__ == "TiesParams" and params.lambda_ == 0.8 and params["lambda"] == 0.8
    assert params.per_input[1].weight == 0.3 and params.per_input[2]["density"] == 0.6
    with pytest.raises(AttributeError):
        _ = params.per_input[0].weight  # the base has no weight: an error, not a default
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.normalize = False
    assert params.as_dict() == {
        "shared": {"int8_mask": False, "normalize": True, "rescale": False, "lambda": 0.8},
        "per_input": [
            {},
            {"weight": 0.3, "density": 0.45, "tie_break": "index"},
            {"weight": 0.4, "density": 0.6, "tie_break": "index"},
        ],
    }
    assert params == params_for("ties", 3, 0, {"lambda": 0.8}, PER)  # plain frozen values


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_is_passes_then_a_combine(method):
    *passes, combine = _steps(method)
    assert all(issubclass(p, Pass) and p.name for p in passes)
    assert combine.whole or issubclass(combine, Combine)
    assert (method in WHOLE) == any(
        s.whole and not (isinstance(s, type) and issubclass(s, Pass)) for s in (*passes, combine)
    )


def test_ties_takes_the_whole_tensor_only_for_what_needs_it():
    assert [s.__name__ for s in _steps("ties")] == ["MagnitudeThreshold", "SignConsensus"]
    assert _steps("ties", rescale=True)[0].whole  # the L1 rescale sums the whole delta
    assert [s.__name__ for s in _steps("task_arithmetic")] == ["Sum"]


def _inputs(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(61, 50, generator=g)
    out = [base] + [base + (torch.randn(base.shape, generator=g) * 8).round() / 256 * (i + 1) for i in range(2)]
    return [t.to(dtype) for t in out]


@pytest.mark.parametrize("kernels", [True, False], ids=["C", "torch"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("method", sorted(set(METHODS) - WHOLE - {"passthrough"}))
def test_ranges_give_the_bits_of_one_range(method, dtype, kernels, monkeypatch):
    """Odd ranges that cut rows and threshold groups: the same bits as one range for the tensor."""
    if not kernels:
        monkeypatch.setattr(native, "_kernels", None)
    count, base = _form(method)
    shared = dict(SHARED, filter_wise=True) if method == "model_stock" else SHARED
    tensors = _inputs(dtype)[:count]
    whole = call(method, tensors, base, shared, PER)
    monkeypatch.setattr(steps, "RANGE", 97)
    monkeypatch.setattr(threshold, "GROUP_MIN", 301)
    assert torch.equal(call(method, tensors, base, shared, PER), whole)
