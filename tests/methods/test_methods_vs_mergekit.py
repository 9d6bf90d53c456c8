"""Differential tests, method by method: mergesmith's methods (their steps, run as a merge runs
them, on tensors in memory) against mergekit 0.1.5's
merge methods (its in-process ``merge_tensors``) on pico tensors, in fp32, bf16 and fp16.

Cheaper than whole merges (no mergekit start-up), so every parameter variant and input form
(with and without base) is covered here, on four llama tensors and two of the tied qwen2 family
(a q_proj bias, the embedding that is also the head); test_parity_more.py covers the same
methods through recipes. Random methods draw from a generator seeded like mergekit's global one, so even their
masks must agree bit for bit.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from calls import call
from parity_summary import BEYOND_MERGEKIT
from reference import compare, load_dir, ulp_distance

from mergesmith.methods import sparsify
from mergesmith.methods.registry import METHODS

pytestmark = pytest.mark.mergekit

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# A 2-D projection, a wide one, a 1-D norm and the embedding (vocab rows).
NAMES = (
    "model.layers.1.self_attn.q_proj.weight",
    "model.layers.2.mlp.down_proj.weight",
    "model.layers.0.input_layernorm.weight",
    "model.embed_tokens.weight",
)
SEED = 1234


# qwen2 (tied embeddings): a q_proj bias, which llama lacks, and the embedding that is also its head.
QWEN2_NAMES = ("model.layers.1.self_attn.q_proj.bias", "model.embed_tokens.weight")


@pytest.fixture(scope="module")
def pico(llama_family) -> dict[str, list[torch.Tensor]]:
    """name -> [base, ft1, ft2] tensors of the llama family."""
    models = [load_dir(path) for path in llama_family]
    return {name: [m[name] for m in models] for name in NAMES}


@pytest.fixture(scope="module")
def both_families(pico, qwen2_family) -> dict[str, list[torch.Tensor]]:
    """ "family:name" -> [base, ft1, ft2] tensors: the llama ones and QWEN2_NAMES of the qwen2 family."""
    models = [load_dir(path) for path in qwen2_family]
    return {
        **{f"llama:{name}": family for name, family in pico.items()},
        **{f"qwen2:{name}": [m[name] for m in models] for name in QWEN2_NAMES},
    }


def theirs(method: str, tensors, base_index, shared: dict, per: dict) -> torch.Tensor:
    from mergekit.merge_methods.api import merge_tensors

    return merge_tensors(
        tensors, method, parameters={**shared, **per}, ids=list(range(len(tensors))), base_index=base_index
    )


def ours(method: str, tensors, base_index, shared: dict, per: dict) -> torch.Tensor:
    generator = torch.Generator().manual_seed(SEED) if METHODS[method].random else None
    return call(method, tensors, base_index, shared, per, generator)


W2 = {"weight": {1: 0.6, 2: 0.4}}
# (method, inputs, base_index, shared, per-model); inputs index [base, ft1, ft2].
CASES = [
    ("breadcrumbs", (0, 1, 2), 0, {}, {**W2, "density": {1: 0.5, 2: 0.8}, "gamma": {1: 0.02, 2: 0.0}}),
    ("breadcrumbs", (0, 1, 2), 0, {"rescale": True}, {**W2, "density": {1: 0.97, 2: 0.3}, "gamma": {1: 0.1, 2: 0.01}}),
    ("breadcrumbs_ties", (0, 1, 2), 0, {"normalize": True}, {**W2, "density": {1: 0.5, 2: 0.7}}),
    ("dare_ties", (0, 1, 2), 0, {}, {**W2, "density": {1: 0.3, 2: 0.6}}),
    ("dare_linear", (0, 1, 2), 0, {"rescale": False}, {**W2, "density": {1: 0.5, 2: 0.9}}),
    ("della", (0, 1, 2), 0, {}, {**W2, "density": {1: 0.4, 2: 0.6}, "epsilon": {1: 0.1, 2: 0.3}}),
    ("della_linear", (0, 1, 2), 0, {"rescale": False, "lambda": 0.8}, {**W2, "density": {1: 0.5, 2: 0.5}}),
    ("model_stock", (0, 1, 2), 0, {}, {}),
    ("model_stock", (0, 1, 2), 0, {"filter_wise": True}, {}),
    ("nuslerp", (0, 1, 2), 0, {}, {"weight": {1: 0.3, 2: 0.7}}),
    ("nuslerp", (0, 1, 2), 0, {"nuslerp_flatten": False}, {"weight": {1: 0.3, 2: 0.7}}),
    ("nuslerp", (0, 1, 2), 0, {"nuslerp_flatten": False, "nuslerp_row_wise": True}, {"weight": {1: 0.3, 2: 0.7}}),
    ("nuslerp", (1, 2), None, {"nuslerp_flatten": False}, {"weight": {0: 2.0, 1: 1.0}}),
    ("nuslerp", (1, 2), None, {}, {"weight": {0: 1.0, 1: -1.0}}),  # weights sum to 0: t = 0.5
    ("multislerp", (0, 1, 2), 0, {}, {"weight": {1: 0.3, 2: 0.7}}),
    ("multislerp", (0, 1, 2), None, {"normalize_weights": False}, {"weight": {0: 0.2, 1: 0.3, 2: 0.5}}),
    ("multislerp", (0, 1), 0, {}, {"weight": {1: 0.5}}),  # one model: itself
    ("karcher", (0, 1, 2), None, {}, {}),
    ("karcher", (0, 1), None, {"max_iter": 3, "tol": 1e-3}, {}),
    ("sce", (0, 1, 2), 0, {}, {}),
    ("sce", (0, 1, 2), 0, {"select_topk": 0.3, "int8_mask": True}, {}),
    ("nearswap", (0, 2), 0, {"t": 0.01}, {}),
    ("nearswap", (2, 0), 1, {"t": 0.001}, {}),  # base second
    ("arcee_fusion", (0, 1), 0, {}, {}),
    ("ram", (0, 1, 2), 0, {"epsilon": 0.015}, {}),
    ("ramplus_tl", (0, 1, 2), 0, {"epsilon": 0.02, "r": 0.5, "alpha": 0.3}, {}),
]


def _ids(case) -> str:
    method, inputs, base_index, shared, _ = case
    form = f"{len(inputs)} inputs" + (", base" if base_index is not None else ", no base")
    options = ", ".join(f"{k}={v}" for k, v in shared.items())
    return f"{method} ({form}{'; ' + options if options else ''})"


@pytest.mark.parametrize("case", CASES, ids=[_ids(c) for c in CASES])
def test_method_matches_mergekit(case, both_families, parity_log):
    method, inputs, base_index, shared, per = case
    got, want = {}, {}
    for dtype in DTYPES:
        for name, family in both_families.items():
            tensors = [family[i].to(dtype) for i in inputs]
            key = f"{name}:{dtype}"
            got[key] = ours(method, tensors, base_index, shared, per)
            torch.manual_seed(SEED)  # mergekit's random methods draw from the global generator
            want[key] = theirs(method, tensors, base_index, shared, per).to(got[key].dtype)
    parity = compare(got, want)
    parity_log.append((f"fn llama+qwen2 {_ids(case)} x 3 dtypes x {len(both_families)} tensors", parity))
    assert parity.matches, parity.summary()


def _edge_inputs():
    a = torch.randn(8, 16, generator=torch.Generator().manual_seed(11))
    d = torch.randn(8, 16, generator=torch.Generator().manual_seed(12))
    z = torch.zeros_like(a)
    ones = {"weight": {0: 1.0, 1: 1.0}}
    return {
        "multislerp antipodal pair": ("multislerp", [a, -a], None, {}, ones),
        "karcher with a zero input": ("karcher", [a, z], None, {}, {}),
        "karcher of zeros": ("karcher", [z, z], None, {}, {}),
        "model_stock opposite offsets": ("model_stock", [a, a + d, a - d], 0, {}, {}),
        "model_stock identical finetunes": ("model_stock", [a, a + d, a + d], 0, {"filter_wise": True}, {}),
        "nuslerp colinear": ("nuslerp", [a, 3 * a], None, {}, ones),
        "nuslerp identical to base": (
            "nuslerp",
            [a, a, a + d],
            0,
            {"nuslerp_flatten": False},
            {"weight": {1: 1.0, 2: 1.0}},
        ),
        "sce select nothing": ("sce", [a, a + d, a - d], 0, {"select_topk": 0.0}, {}),
        "sce no update": ("sce", [a, a, a], 0, {}, {}),
        "ram no update": ("ram", [a, a, a], 0, {}, {}),
        "ramplus_tl all shared": ("ramplus_tl", [a, a + d, a + 2 * d], 0, {}, {}),
        "nearswap identical": ("nearswap", [a, a], 0, {"t": 0.01}, {}),
        "arcee_fusion identical": ("arcee_fusion", [a, a], 0, {}, {}),
        "breadcrumbs keeps none of a norm": (
            "breadcrumbs",
            [a[0], d[0]],
            0,
            {},
            {"weight": {1: 1.0}, "density": {1: 0.05}},
        ),
    }


@pytest.mark.parametrize("label", list(_edge_inputs()))
def test_edge_cases_match_mergekit(label):
    method, tensors, base_index, shared, per = _edge_inputs()[label]
    for dtype in DTYPES:
        cast = [t.to(dtype) for t in tensors]
        torch.manual_seed(SEED)
        want = theirs(method, cast, base_index, shared, per)
        if label == "multislerp antipodal pair" and dtype == torch.float16:
            # mergekit compares the mean's norm with eps = 1e-8 in fp16, where eps is 0: NaN
            assert want.isnan().all()
            with pytest.warns(UserWarning, match="multislerp: eps = 1e-08 rounds to 0 in torch.float16"):
                got = ours(method, cast, base_index, shared, per)
            assert torch.equal(got, torch.zeros_like(got))
            continue
        got = ours(method, cast, base_index, shared, per)
        assert int(ulp_distance(got, want.to(got.dtype)).max()) == 0, (label, dtype)  # NaN == NaN here


@pytest.mark.parametrize("dtype", DTYPES)
def test_outliers_sparsifier_matches_mergekit_for_gamma_at_least_0(dtype, pico):
    from mergekit.sparsify import RescaleNorm, magnitude_outliers

    for family in pico.values():
        delta = (family[1] - family[0]).to(dtype)
        for density in (0.0, 0.01, 0.3, 0.9, 0.999, 1.0):
            for gamma in (0.0, 1e-5, 0.01, 0.2, 1.5):
                for rescale in (False, True):
                    want = magnitude_outliers(delta, density, RescaleNorm.l1 if rescale else None, gamma=gamma)
                    got = sparsify.outliers(delta, density, rescale, gamma=gamma)
                    assert torch.equal(got, want), (density, gamma, rescale)


def test_negative_gamma_keeps_density_where_mergekit_keeps_fewer(pico):
    from mergekit.sparsify import magnitude_outliers

    delta = pico[NAMES[0]][1] - pico[NAMES[0]][0]  # 4096 entries, no zeros
    keep = int(0.3 * delta.numel())
    ours_kept = sparsify.outliers(delta, 0.3, False, gamma=-0.1)
    assert int((ours_kept != 0).sum()) == keep
    assert torch.equal(ours_kept, sparsify.outliers(delta, 0.3, False, gamma=0.0))
    theirs_kept = magnitude_outliers(delta, 0.3, None, gamma=-0.1)
    assert int((theirs_kept != 0).sum()) == keep - int(0.1 * delta.numel())  # the window slid off the top
    assert int((magnitude_outliers(delta, 0.3, None, gamma=-0.3) != 0).sum()) == 0  # |gamma| >= density: nothing


def test_random_sparsifiers_draw_mergekits_masks(pico):
    from mergekit.sparsify import RescaleNorm, bernoulli, della_magprune

    for dtype in DTYPES:
        for family in pico.values():
            delta = (family[2] - family[0]).to(dtype)
            for density, rescale in ((0.2, False), (0.5, True), (0.85, True)):
                norm = RescaleNorm.l1 if rescale else None
                torch.manual_seed(7)
                want = bernoulli(delta, density, norm)
                assert torch.equal(sparsify.random(delta, density, rescale, torch.Generator().manual_seed(7)), want)
                torch.manual_seed(7)
                want = della_magprune(delta, density, 0.1, norm)
                got = sparsify.magprune(delta, density, rescale, torch.Generator().manual_seed(7), epsilon=0.1)
                assert torch.equal(got, want), (dtype, density, rescale)


# Parameters mergesmith adds on purpose (README: "Where mergesmith differs"); defaults keep
# mergekit's behaviour or are documented there.
MERGESMITH_ONLY = {"tie_break"}


def test_registry_declares_mergekits_methods_and_parameters():
    from mergekit.merge_methods.base import MISSING
    from mergekit.merge_methods.registry import registered_methods

    for method in registered_methods():
        spec = METHODS[method.spec.name]
        want = {
            (p.name, p.scope.value, "required" if p.default is MISSING else p.default) for p in method.spec.parameters
        }
        have = {
            (p.name, p.scope.value, "required" if p.required else p.default)
            for p in spec.params
            if p.name not in MERGESMITH_ONLY
        }
        assert have == want, spec.name
        assert spec.base.value == method.spec.contract.base.value, spec.name
    assert {m.spec.name for m in registered_methods()} == set(METHODS) - set(BEYOND_MERGEKIT)


def test_methods_beyond_mergekit_are_compared_with_their_authors_code():
    here = Path(__file__).parent
    for method, where in BEYOND_MERGEKIT.items():
        assert method in METHODS
        file, test = where.split("::")
        assert f"def {test}(" in (here / file).read_text(), f"{method}: {where} is gone"
