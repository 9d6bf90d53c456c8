"""Gradients, filters and precedence give the values mergekit gives."""

from __future__ import annotations

import pytest

from mergesmith.config.params import evaluate, interpolate, resolve
from mergesmith.config.schema import Conditional

as_float = float


@pytest.mark.parametrize("t,expected", [(0.0, 0.0), (1.0, 1.0), (0.125, 0.25), (0.25, 0.5), (0.5, 0.3), (0.625, 0.5)])
def test_gradient_is_piecewise_linear_between_anchors(t, expected):
    assert interpolate((0, 0.5, 0.3, 0.7, 1), t, as_float) == pytest.approx(expected)


def test_gradient_matches_mergekit_formula_over_32_layers():
    anchors = (0, 0.5, 0.3, 0.7, 1)
    for i in range(32):
        t = i / 31
        scaled = t * 4
        i0 = int(scaled)
        i1 = min(4, i0 + 1)
        frac = scaled - i0
        assert interpolate(anchors, t, as_float) == (1 - frac) * anchors[i0] + frac * anchors[i1]


def test_non_numeric_gradient_selects():
    assert interpolate((True, False), 0.4, bool) is True
    assert interpolate((True, False), 1.0, bool) is False


def test_first_matching_filter_wins_and_fallback_applies():
    setting = (Conditional(filter="self_attn", value=0.1), Conditional(filter="mlp", value=0.2), Conditional(value=0.5))
    assert evaluate(setting, "model.layers.0.self_attn.q_proj.weight", 0, as_float) == 0.1
    assert evaluate(setting, "model.layers.0.mlp.up_proj.weight", 0, as_float) == 0.2
    assert evaluate(setting, "model.norm.weight", 0, as_float) == 0.5


def test_no_match_falls_through_to_lower_precedence():
    high = {"t": (Conditional(filter="mlp", value=0.9),)}
    low = {"t": 0.3}
    assert resolve("t", [high, None, low], "model.layers.1.self_attn.k_proj.weight", 0, as_float) == (True, 0.3)
    assert resolve("t", [high, None, low], "model.layers.1.mlp.up_proj.weight", 0, as_float) == (True, 0.9)
    assert resolve("x", [high, low], "a", 0, as_float) == (False, None)


def test_star_filter_matches_everything():
    assert evaluate(Conditional(filter="*", value=2), "anything", 0, as_float) == 2.0
