"""inspect_models against an independent computation: plain torch in float64 on the same tensors,
loaded with safetensors, with the formulas of mergesmith/inspect/stats.py written out again."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from mergesmith.inspect import inspect_models, stats
from mergesmith.inspect.layout import places

TOL = 1e-5


def load(path):
    return {k: v.double() for k, v in load_file(str(path / "model.safetensors")).items()}


def cos(a, b):
    return float(a.flatten() @ b.flatten() / (a.norm() * b.norm()))


def signs_agree(a, b):
    both = (a != 0) & (b != 0)
    return float((torch.sign(a) == torch.sign(b))[both].sum() / both.sum())


def topk_share(delta, k):
    s = torch.linalg.svdvals(delta.reshape(delta.shape[0], -1))
    return float(s[:k].square().sum() / s.square().sum())


def close(got, want, tol=TOL):
    assert got is not None and math.isclose(got, want, rel_tol=tol, abs_tol=tol), (got, want)


@pytest.fixture(scope="module")
def with_base(llama_family):
    base, ft1, ft2 = llama_family
    return inspect_models([str(ft1), str(ft2)], base=str(base), top_k=4)


def test_every_tensor_against_plain_torch(llama_family, with_base):
    base, ft1, ft2 = (load(p) for p in llama_family)
    assert [r.name for r in with_base.rows] and {r.name for r in with_base.rows} == set(base)
    for row in with_base.rows:
        b, a1, a2 = base[row.name], ft1[row.name], ft2[row.name]
        d1, d2 = a1 - b, a2 - b
        close(row.cosine[0][1], cos(d1, d2))
        assert row.cosine[0][1] == row.cosine[1][0] and row.cosine[0][0] == 1.0
        close(row.rel_l2[0][1], float((a1 - a2).norm() / ((a1.norm() + a2.norm()) / 2)))
        assert row.rel_l2[1][0] == row.rel_l2[0][1] and row.rel_l2[0][0] == 0.0
        close(row.delta_norm[0], float(d1.norm() / b.norm()))
        close(row.delta_norm[1], float(d2.norm() / b.norm()))
        close(row.sign_agreement[0][1], signs_agree(d1, d2))
        if b.dim() == 2:  # pico matrices are small: exact singular values
            close(row.topk_energy[0], topk_share(d1, 4))
            close(row.topk_energy[1], topk_share(d2, 4))
        else:
            assert row.topk_energy == (None, None)


def test_without_base_compares_the_weights(llama_family):
    base, ft1, _ = llama_family
    result = inspect_models([str(base), str(ft1)])
    tensors = load(base), load(ft1)
    for row in result.rows:
        a, b = (t[row.name] for t in tensors)
        close(row.cosine[0][1], cos(a, b))
        close(row.rel_l2[0][1], float((a - b).norm() / ((a.norm() + b.norm()) / 2)))
        assert row.delta_norm is None and row.sign_agreement is None and row.topk_energy is None


def test_rows_carry_layer_and_module(with_base):
    by_name = {r.name: r for r in with_base.rows}
    assert (
        by_name["model.layers.2.self_attn.q_proj.weight"].layer,
        by_name["model.layers.2.self_attn.q_proj.weight"].module,
    ) == (2, "attention")
    assert (
        by_name["model.layers.3.mlp.down_proj.weight"].layer,
        by_name["model.layers.3.mlp.down_proj.weight"].module,
    ) == (3, "mlp")
    assert (
        by_name["model.layers.0.input_layernorm.weight"].layer,
        by_name["model.layers.0.input_layernorm.weight"].module,
    ) == (0, "norm")
    assert (by_name["model.embed_tokens.weight"].layer, by_name["model.embed_tokens.weight"].module) == (
        None,
        "embedding",
    )
    assert (by_name["lm_head.weight"].module, by_name["model.norm.weight"].module) == ("head", "norm")


def test_names_without_a_definition_are_placed_by_name():
    names = [
        "transformer.h.3.attn.c_attn.weight",
        "transformer.h.3.ln_1.weight",
        "transformer.h.3.mlp.c_fc.weight",
        "transformer.wte.weight",
        "head.weight",
        "transformer.h.3.extra",
    ]
    found = places(names, {"architectures": ["NoSuchModel"]}, {n: (4, 4) for n in names}, "m")
    assert [(found[n].layer, found[n].module) for n in names] == [
        (3, "attention"),
        (3, "norm"),
        (3, "mlp"),
        (None, "embedding"),
        (None, "head"),
        (3, "other"),
    ]


def test_sign_agreement_counts_only_entries_where_both_deltas_move():
    base = torch.zeros(6)
    a = torch.tensor([1.0, -1.0, 2.0, 0.0, 3.0, -2.0])
    b = torch.tensor([2.0, 1.0, 0.0, 5.0, 1.0, -1.0])
    sums = stats.accumulate([a, b], base)
    # both non-zero at 0, 1, 4, 5; signs agree at 0, 4, 5
    assert sums.both[0, 1] == 4 and sums.agree[0, 1] == 3
    assert stats.sign_agreement(sums)[0][1] == 0.75


def test_chunks_add_up_to_one_pass(llama_family):
    base, ft1, ft2 = (load(p)["model.layers.1.mlp.up_proj.weight"].float() for p in llama_family)
    whole = stats.accumulate([ft1, ft2], base)
    pieces = stats.accumulate([ft1, ft2], base, chunk=1000)  # 8192 entries: 9 chunks, the last short
    for field in ("gram", "diff_sq", "weight_sq", "both", "agree"):
        assert torch.allclose(getattr(whole, field), getattr(pieces, field), rtol=1e-6), field


def test_low_rank_estimate_is_a_tight_lower_bound():
    g = torch.Generator().manual_seed(0)
    # A fine-tune-like delta: a decaying spectrum (rank-12 signal) plus small noise.
    u, v = torch.randn(600, 12, generator=g), torch.randn(12, 500, generator=g)
    delta = (u * torch.logspace(0, -1.5, 12)) @ v + 0.01 * torch.randn(600, 500, generator=g)
    exact = stats.topk_energy(delta, 8, exact_max=10_000)
    estimate = stats.topk_energy(delta, 8, exact_max=100)  # 500 > 100: svd_lowrank
    assert estimate <= exact + 1e-6 and exact - estimate < 0.01 * exact
    assert stats.topk_energy(delta, 8, exact_max=100) == estimate  # seeded: repeats exactly
    close(exact, topk_share(delta.double(), 8))


def test_low_rank_estimate_on_a_power_law_spectrum():
    """A full fine-tune's delta: singular values falling as i^-0.7, no gap after k."""
    g = torch.Generator().manual_seed(1)
    u = torch.linalg.qr(torch.randn(512, 200, generator=g)).Q
    v = torch.linalg.qr(torch.randn(1024, 200, generator=g)).Q
    delta = (u * torch.arange(1, 201).float() ** -0.7) @ v.T
    exact, estimate = topk_share(delta.double(), 8), stats.topk_energy(delta, 8)
    assert estimate <= exact + 1e-6 and exact - estimate < 0.003 * exact, (estimate, exact)


def test_zero_delta_has_no_cosine_and_no_energy(llama_family):
    base = str(llama_family[0])
    result = inspect_models([base, str(llama_family[1])], base=base)
    row = result.rows[0]
    assert row.cosine[0][1] is None and row.cosine[0][0] is None and row.delta_norm[0] == 0.0
    assert row.sign_agreement[0][1] is None and row.topk_energy[0] is None


def test_each_input_tensor_is_read_once(llama_family, monkeypatch):
    from mergesmith.io.reader import SafetensorsReader

    reads = []
    original = SafetensorsReader.get
    monkeypatch.setattr(
        SafetensorsReader, "get", lambda self, name: reads.append((self.path, name)) or original(self, name)
    )
    base, ft1, ft2 = llama_family
    result = inspect_models([str(ft1), str(base), str(ft2)], base=str(base))  # the base among the models too
    assert len(reads) == len(set(reads)) == 3 * len(result.rows)


def test_device_path_gives_the_same_numbers(llama_family, with_base):
    """``cpu:0`` takes the device branch (base copied to the device, nothing mixed across devices);
    no GPU has run this yet, so this is the CUDA path as far as a CPU can follow it."""
    base, ft1, ft2 = llama_family
    moved = inspect_models([str(ft1), str(ft2)], base=str(base), top_k=4, device="cpu:0")
    assert moved.rows == with_base.rows
