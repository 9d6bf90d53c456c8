"""What planning must catch or tell for the added methods, before any tensor is read: the
planner honours what the method specs declare (``BasePolicy.OPTIONAL``,
``min_non_base``/``max_non_base``, ``check``)."""

from __future__ import annotations

import pytest

from mergesmith.api import plan as plan_recipe
from mergesmith.errors import ConfigError


def _recipe(base, others, method: str, params: str, extra: str = "") -> str:
    """``others`` each with ``params``; ``base`` (None: no base) first and as base_model."""
    lines = ["models:"] + ([f"  - model: {base}"] if base else [])
    lines += [f"  - model: {path}\n    parameters: {params}" for path in others]
    lines += [f"base_model: {base}"] if base else []
    return "\n".join(lines) + f"\nmerge_method: {method}\n{extra}dtype: float32\n"


def test_negative_gamma_warns_at_plan_time(llama_family):
    recipe = _recipe(llama_family[0], llama_family[1:], "breadcrumbs", "{weight: 0.5, density: 0.5, gamma: -0.02}")
    with pytest.warns(UserWarning, match="breadcrumbs: parameter gamma = -0.02 is negative"):
        plan = plan_recipe(recipe)
    assert {job.params.per_input[1].gamma for job in plan.jobs} == {-0.02}


def test_rescale_paper_is_planned_for_dare_and_refused_for_ties(llama_family):
    plan = plan_recipe(
        _recipe(
            llama_family[0],
            llama_family[1:],
            "dare_ties",
            "{weight: 0.5, density: 0.5}",
            "parameters: {rescale: paper}\n",
        )
    )
    assert {job.params.rescale for job in plan.jobs} == {"paper"}
    with pytest.raises(ConfigError, match="parameter 'rescale' = 'paper' is not true or false"):
        plan_recipe(
            _recipe(
                llama_family[0],
                llama_family[1:],
                "ties",
                "{weight: 0.5, density: 0.5}",
                "parameters: {rescale: paper}\n",
            )
        )


def test_nuslerp_plans_with_a_base(llama_family):
    plan = plan_recipe(_recipe(llama_family[0], llama_family[1:], "nuslerp", "{weight: 0.5}"))
    assert {job.base_index for job in plan.jobs} == {0}


def test_della_epsilon_out_of_range_is_refused_at_plan_time(llama_family):
    recipe = _recipe(llama_family[0], llama_family[1:], "della", "{weight: 0.5, density: 0.9, epsilon: 0.15}")
    with pytest.raises(ConfigError, match=r"della: density 0.9 with epsilon 0.15 .* choose \|epsilon\| < 0.1"):
        plan_recipe(recipe)


def test_nuslerp_without_base_takes_exactly_two_models(llama_family):
    plan = plan_recipe(_recipe(None, llama_family[1:], "nuslerp", "{weight: 0.5}"))
    assert {job.base_index for job in plan.jobs} == {None}
    with pytest.raises(ConfigError, match="'nuslerp' takes exactly 2 models besides the base, got 3"):
        plan_recipe(_recipe(None, llama_family, "nuslerp", "{weight: 0.5}"))
