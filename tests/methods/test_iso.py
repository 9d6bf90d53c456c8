"""iso_c and iso_cts: against a transcription of the authors' code, identities, the numerical
rank of LoRA deltas and its randomised path, errors through the CLI."""

from __future__ import annotations

import pytest
import torch
from calls import RECIPE, call
from cli_helpers import cli, merge_fails, write_recipe

from mergesmith.execute.runner import generator_for
from mergesmith.methods import subspace


def reference_iso_c(deltas: list[torch.Tensor]) -> torch.Tensor:
    """One key of danielm1405/iso-merging, src/utils/iso.py, iso_c, step by step: the mean of
    the task vectors; for a matrix, times their number (the sum), its spectrum set to its mean."""
    merged = sum(deltas) / len(deltas)
    if merged.dim() == 2:
        merged *= len(deltas)
        u, s, v = torch.linalg.svd(merged, full_matrices=False)
        s_mean = torch.ones_like(s) * s.mean()
        merged = torch.linalg.multi_dot((u, torch.diag(s_mean), v))
    return merged


def reference_iso_cts(deltas: list[torch.Tensor], common_space_fraction: float) -> torch.Tensor:
    """One key of danielm1405/iso-merging, src/utils/iso.py, iso_cts, step by step."""
    shape_, tasks = deltas[0].shape, len(deltas)
    if len(shape_) != 2:  # running mean
        merged = deltas[0].clone()
        for i, vec in enumerate(deltas[1:], start=1):
            merged += (vec - merged) / (i + 1)
        return merged
    combined_w = sum(deltas)
    common_space_index_s = int(min(shape_) * common_space_fraction)
    task_specific_total = round((min(shape_) - common_space_index_s) / tasks) * tasks
    common_space_index_s = min(shape_) - task_specific_total
    u, s, v = torch.linalg.svd(combined_w, full_matrices=False)
    common_u, common_s, common_v = u[:, :common_space_index_s], s[:common_space_index_s], v[:common_space_index_s]
    n_dims_per_task = int((min(shape_) - common_space_index_s) / tasks)
    for i, w in enumerate(deltas):
        w_ts = w - common_u @ common_u.T @ w
        u_ts, s_ts, v_ts = torch.linalg.svd(w_ts, full_matrices=False)
        if i == 0:
            comb_u, comb_s, comb_v = torch.zeros_like(u_ts), torch.zeros_like(s_ts), torch.zeros_like(v_ts)
        span = slice(i * n_dims_per_task, (i + 1) * n_dims_per_task)
        comb_u[:, span], comb_s[span], comb_v[span, :] = (
            u_ts[:, :n_dims_per_task],
            s_ts[:n_dims_per_task],
            v_ts[:n_dims_per_task, :],
        )
    rest = slice(tasks * n_dims_per_task, tasks * n_dims_per_task + common_space_index_s)
    comb_u[:, rest], comb_s[rest], comb_v[rest, :] = common_u, common_s, common_v
    uu, _, vu = torch.linalg.svd(comb_u, full_matrices=False)
    uv, _, vv = torch.linalg.svd(comb_v, full_matrices=False)
    comb_s = torch.ones_like(comb_s) * comb_s.mean()
    return torch.linalg.multi_dot((uu @ vu, torch.diag(comb_s), uv @ vv))


def family(shape, tasks: int, seed: int = 0, dtype=torch.float64) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g, dtype=dtype)
    return [base, *(base + 0.1 * torch.randn(shape, generator=g, dtype=dtype) for _ in range(tasks))]


def merged(method: str, tensors, **shared) -> torch.Tensor:
    return call(method, tensors, base_index=0, shared=shared, generator=generator_for(0, "t"))


# float64 inputs, exact LAPACK SVDs on both sides (the shapes are too small for the randomised
# path): the two differ by rounding only, ~1e-14; 1e-9 is room for LAPACK's choice of bases.
@pytest.mark.parametrize("shape,tasks,alpha", [((40, 50), 3, 1.3), ((36, 28), 2, 0.5), ((24,), 3, 1.0)])
def test_iso_c_matches_the_authors_code(shape, tasks, alpha):
    tensors = family(shape, tasks)
    want = tensors[0] + alpha * reference_iso_c([x - tensors[0] for x in tensors[1:]])
    torch.testing.assert_close(merged("iso_c", tensors, alpha=alpha), want, rtol=0, atol=1e-9)


@pytest.mark.parametrize(
    "shape,tasks,fraction", [((40, 50), 3, 0.8), ((36, 28), 2, 0.8), ((30, 30), 4, 0.5), ((24,), 2, 0.8)]
)
def test_iso_cts_matches_the_authors_code(shape, tasks, fraction):
    tensors = family(shape, tasks, seed=1)
    want = tensors[0] + 0.9 * reference_iso_cts([x - tensors[0] for x in tensors[1:]], fraction)
    got = merged("iso_cts", tensors, alpha=0.9, common_space_fraction=fraction)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-9)


def test_iso_c_flattens_the_spectrum_of_the_sum():
    tensors = family((30, 20), 2)
    total = sum(x - tensors[0] for x in tensors[1:])
    out = merged("iso_c", tensors) - tensors[0]
    s = torch.linalg.svdvals(out)
    torch.testing.assert_close(s, torch.full_like(s, float(torch.linalg.svdvals(total).mean())), rtol=1e-12, atol=0)


def test_a_flat_spectrum_is_left_as_it_is():
    """One task whose singular values are all equal: Iso-C returns base + alpha · delta."""
    q, _ = torch.linalg.qr(torch.randn(20, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(5)))
    base = torch.randn(20, 12, dtype=torch.float64)
    got = merged("iso_c", [base, base + 0.2 * q], alpha=0.4)
    torch.testing.assert_close(got, base + 0.08 * q, rtol=0, atol=1e-12)


def test_iso_cts_with_everything_common_is_iso_c():
    tensors = family((30, 24), 3, seed=2)
    torch.testing.assert_close(
        merged("iso_cts", tensors, common_space_fraction=1.0), merged("iso_c", tensors), rtol=0, atol=1e-10
    )


def lora_family(shape, rank: int, tasks: int, seed: int) -> list[torch.Tensor]:
    """float32 base and fine-tunes base + B·A of rank ``rank``: low rank plus float32 rounding."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    deltas = [torch.randn(shape[0], rank, generator=g) @ torch.randn(rank, shape[1], generator=g) for _ in range(tasks)]
    return [base, *(base + 0.01 * d for d in deltas)]


def test_lora_sum_is_flattened_over_its_numerical_rank():
    """Two rank-4 LoRA deltas: the sum has rank 8 plus rounding noise; Iso-C gives 8 equal
    singular values (the mean of the sum's 8), not min(m, n) of them."""
    tensors = lora_family((40, 32), 4, 2, seed=6)
    total = sum(x.double() - tensors[0].double() for x in tensors[1:])
    top8 = torch.linalg.svdvals(total)[:8]
    s = torch.linalg.svdvals(merged("iso_c", tensors).double() - tensors[0].double())
    torch.testing.assert_close(s[:8], torch.full((8,), float(top8.mean()), dtype=torch.float64), rtol=1e-4, atol=0)
    assert float(s[8]) < 1e-4 * float(s[0])  # float32 rounding of the output only
    everything = merged("iso_c", tensors, rank_tol=1e-12)  # the reference's min(m, n) directions
    s_all = torch.linalg.svdvals(everything.double() - tensors[0].double())
    assert float(s_all[0]) < 0.5 * float(s[0])  # σ̄ shrinks by min(m, n) / rank = 4


def test_numerical_rank_takes_the_randomised_path_and_agrees_with_the_full_svd():
    tensors = lora_family((300, 260), 6, 2, seed=7)
    total = sum(x - tensors[0] for x in tensors[1:])
    rel_tol = subspace.tolerance(total.shape, torch.float32, None)
    assert subspace._randomises(subspace.FIRST_PROBE, total)
    found = subspace.numerical(total, generator_for(0, "x"), rel_tol)
    full = subspace.exact(total)
    assert len(found) == 12 and len(full.above(rel_tol * float(full.s[0]))) == 12
    torch.testing.assert_close(found.u @ found.vh, full.u[:, :12] @ full.vh[:12], rtol=0, atol=1e-4)
    torch.testing.assert_close(found.s, full.s[:12], rtol=1e-5, atol=0)


def test_full_rank_probe_falls_back_to_the_full_svd():
    x = torch.randn(200, 150, generator=torch.Generator().manual_seed(8))
    found = subspace.numerical(x, generator_for(0, "x"), subspace.tolerance(x.shape, torch.float32, None))
    assert len(found) == 150


@pytest.mark.parametrize("method", ["iso_c", "iso_cts"])
def test_zero_deltas_give_the_base(method):
    base = torch.randn(9, 7)
    assert torch.equal(call(method, [base, base.clone(), base.clone()], base_index=0), base)


@pytest.mark.parametrize("method", ["iso_c", "iso_cts"])
def test_merge_and_plan_through_the_cli(capsys, tmp_path, llama_family, method):
    base, a, b = llama_family
    recipe = write_recipe(tmp_path, RECIPE.format(method=method, base=base, a=a, b=b, params="alpha: 0.5"))
    code, out, err = cli(capsys, "plan", recipe)
    assert code == 0 and method in out, err
    code, _, err = cli(capsys, "merge", recipe, tmp_path / "out", "--quiet")
    assert code == 0, err


@pytest.mark.parametrize(
    "method,params,fragments",
    [
        ("iso_c", "alpha: 0", ("'alpha' = 0", "(0, inf)")),
        ("iso_cts", "common_space_fraction: 1.2", ("'common_space_fraction' = 1.2", "[0, 1]")),
        ("iso_c", "rank_tol: 2.0", ("'rank_tol' = 2.0", "(0, 1)")),
    ],
)
def test_out_of_range_parameters_are_one_error_line(capsys, tmp_path, llama_family, method, params, fragments):
    base, a, b = llama_family
    merge_fails(capsys, tmp_path, RECIPE.format(method=method, base=base, a=a, b=b, params=params), *fragments)


@pytest.mark.parametrize("method", ["iso_c", "iso_cts"])
def test_without_a_base_model_is_one_error_line(capsys, tmp_path, llama_family, method):
    _, a, b = llama_family
    merge_fails(capsys, tmp_path, f"merge_method: {method}\nmodels:\n  - model: {a}\n  - model: {b}\n", "base_model")
