"""Random methods are reproducible by seed and do not depend on the order jobs run in."""

from __future__ import annotations

import dataclasses

import torch
from recipes import models_recipe
from reference import load_dir

import mergesmith
from mergesmith.execute import runner


def test_dare_ties_same_seed_same_output_other_seed_differs(llama_family, tmp_path):
    recipe = models_recipe("dare_ties", llama_family, "float32")
    mergesmith.merge(recipe, tmp_path / "a", seed=1)
    mergesmith.merge(recipe, tmp_path / "b", seed=1)
    mergesmith.merge(recipe, tmp_path / "c", seed=2)
    a, b, c = (load_dir(tmp_path / x) for x in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if k.endswith("proj.weight"))


def test_dare_is_independent_of_job_order(llama_family, tmp_path, monkeypatch):
    recipe = models_recipe("dare_linear", llama_family, "float32")
    mergesmith.merge(recipe, tmp_path / "forward", seed=5)
    original, reversed_runs = runner.execute, []

    def backwards(plan, models, writer, progress=None, workers=2, **options):
        reversed_runs.append(len(plan.jobs))
        original(dataclasses.replace(plan, jobs=plan.jobs[::-1]), models, writer, progress, workers=1, **options)

    # mergesmith.api imports execute when a merge runs (torch stays unimported for `plan`).
    monkeypatch.setattr(runner, "execute", backwards)
    mergesmith.merge(recipe, tmp_path / "backward", seed=5)
    assert reversed_runs, "the merge did not run through the patched execute"
    fwd, bwd = load_dir(tmp_path / "forward"), load_dir(tmp_path / "backward")
    assert fwd.keys() == bwd.keys()
    assert all(torch.equal(fwd[k], bwd[k]) for k in fwd)


def test_dare_keeps_about_density_of_each_delta(llama_family, tmp_path):
    recipe = models_recipe("dare_linear", llama_family, "float32").replace("density: 0.55", "density: 0.5")
    recipe = recipe.replace("parameters: {weight: 0.6, density: [0.3, 0.8]}", "parameters: {weight: 0.0, density: 0.5}")
    mergesmith.merge(recipe + "parameters: {rescale: false}\n", tmp_path / "out", seed=3)
    out, base, ft2 = load_dir(tmp_path / "out"), load_dir(llama_family[0]), load_dir(llama_family[2])
    name = "model.layers.1.self_attn.q_proj.weight"  # not mlp: weight 0.4
    kept = ((out[name] - base[name]).abs() > 0).float().mean().item()
    assert abs(kept - 0.5) < 0.05  # 4096 entries: sd ~0.008
    # kept entries are exactly weight * delta (no rescale)
    delta = ft2[name] - base[name]
    mask = (out[name] - base[name]) != 0
    assert torch.allclose((out[name] - base[name])[mask], 0.4 * delta[mask], atol=1e-6)


def test_worker_count_does_not_change_the_output(llama_family, tmp_path):
    recipe = models_recipe("dare_ties", llama_family, "bfloat16")
    mergesmith.merge(recipe, tmp_path / "one", seed=4, workers=1)
    mergesmith.merge(recipe, tmp_path / "four", seed=4, workers=4)
    one, four = load_dir(tmp_path / "one"), load_dir(tmp_path / "four")
    assert one.keys() == four.keys()
    assert all(torch.equal(one[k], four[k]) for k in one)
