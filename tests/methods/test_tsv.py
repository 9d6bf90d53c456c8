"""tsv: against a transcription of the authors' code, identities, the numerical rank of LoRA
deltas, the randomised SVD, plan and errors through the CLI."""

from __future__ import annotations

import pytest
import torch
from calls import RECIPE, call
from cli_helpers import assert_one_error_line, cli, merge_fails, write_recipe

from mergesmith.execute.runner import generator_for
from mergesmith.methods import deltas, subspace


def reference_tsv(deltas: list[torch.Tensor]) -> torch.Tensor:
    """The merged task vector of one key, transcribed step by step from
    AntoAndGar/task_singular_vectors, src/utils/TSVM_utils.py, compute_and_sum_svd_mem_reduction
    (TSV-Merge; the caller then adds it to the base scaled by the evaluated coefficient)."""
    if deltas[0].dim() != 2:  # "else" branch: running mean of the task vectors
        merged = deltas[0].clone()
        for i, vec in enumerate(deltas[1:], start=1):
            merged += (vec - merged) / (i + 1)
        return merged
    sv_reduction = 1 / len(deltas)
    for i, vec in enumerate(deltas):
        u, s, v = torch.linalg.svd(vec, full_matrices=False)
        if i == 0:
            sum_u, sum_s, sum_v = torch.zeros_like(u), torch.zeros_like(s), torch.zeros_like(v)
        reduced_index_s = int(s.shape[0] * sv_reduction)
        sum_u[:, i * reduced_index_s : (i + 1) * reduced_index_s] = u[:, :reduced_index_s]
        sum_s[i * reduced_index_s : (i + 1) * reduced_index_s] = s[:reduced_index_s]
        sum_v[i * reduced_index_s : (i + 1) * reduced_index_s, :] = v[:reduced_index_s, :]
    u_u, _, v_u = torch.linalg.svd(sum_u, full_matrices=False)
    u_v, _, v_v = torch.linalg.svd(sum_v, full_matrices=False)
    return torch.linalg.multi_dot((u_u, v_u, torch.diag(sum_s), u_v, v_v))


def family(shape, tasks: int, seed: int = 0, dtype=torch.float64) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g, dtype=dtype)
    return [base, *(base + 0.1 * torch.randn(shape, generator=g, dtype=dtype) for _ in range(tasks))]


def lora(shape, rank: int, g: torch.Generator) -> torch.Tensor:
    return torch.randn(shape[0], rank, generator=g) @ torch.randn(rank, shape[1], generator=g) * 0.05


# float64 inputs: both sides take exact LAPACK SVDs of the same float64 matrices, so they differ
# only by rounding, ~1e-13 here; 1e-9 leaves room for LAPACK's choice among equivalent bases.
# (40, 50) with 3 tasks leaves one zero column in the reference's U: its polar factor on the 39
# filled columns is the same, as the comparison shows.
@pytest.mark.parametrize("shape,tasks,alpha", [((40, 50), 3, 0.7), ((50, 36), 2, 1.0), ((24,), 2, 0.5)])
def test_matches_the_authors_code(shape, tasks, alpha):
    tensors = family(shape, tasks)
    deltas = [x - tensors[0] for x in tensors[1:]]
    want = tensors[0] + alpha * reference_tsv(deltas)
    got = call("tsv", tensors, base_index=0, shared={"alpha": alpha}, generator=generator_for(0, "t"))
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=0, atol=1e-9)


def test_float32_compute_agrees_with_float64_reference():
    tensors = family((48, 40), 2)
    want = tensors[0] + reference_tsv([x - tensors[0] for x in tensors[1:]])
    got = call("tsv", [x.float() for x in tensors], base_index=0, generator=generator_for(0, "t"))
    # float32 SVDs of deltas of size ~1: errors of some 1e-6 relative to the deltas
    torch.testing.assert_close(got.double(), want, rtol=0, atol=2e-5)


def test_one_task_at_full_rank_is_its_delta_times_alpha():
    base, x = family((30, 20), 1)
    got = call("tsv", [base, x], base_index=0, shared={"alpha": 0.3}, generator=generator_for(0, "t"))
    torch.testing.assert_close(got, base + 0.3 * (x - base), rtol=0, atol=1e-12)


def test_tasks_in_orthogonal_subspaces_add_up():
    """Orthogonalisation has nothing to do when the tasks' singular vectors are orthogonal: the
    merge is the sum of the task vectors."""
    q_left, _ = torch.linalg.qr(torch.randn(32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))
    q_right, _ = torch.linalg.qr(torch.randn(24, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(2)))
    d1 = q_left[:, :3] @ torch.diag(torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64)) @ q_right[:, :3].T
    d2 = q_left[:, 3:6] @ torch.diag(torch.tensor([1.5, 1.0, 0.5], dtype=torch.float64)) @ q_right[:, 3:6].T
    base = torch.zeros(32, 24, dtype=torch.float64)
    got = call("tsv", [base, d1, d2], base_index=0, shared={"k": 3}, generator=generator_for(0, "t"))
    torch.testing.assert_close(got, d1 + d2, rtol=0, atol=1e-12)


def test_lora_deltas_keep_their_numerical_rank_only():
    """Two rank-4 deltas with float32 rounding: k 4 and k 12 (the full share) give the same
    merge, because the singular vectors past rank 4 are rounding noise and are left out."""
    g = torch.Generator().manual_seed(3)
    base = torch.randn(24, 30, generator=g)
    tensors = [base, base + lora((24, 30), 4, g), base + lora((24, 30), 4, g)]
    exact_k = call("tsv", tensors, base_index=0, shared={"k": 4}, generator=generator_for(0, "t"))
    full = call("tsv", tensors, base_index=0, generator=generator_for(0, "t"))
    torch.testing.assert_close(full, exact_k, rtol=0, atol=1e-6)
    with_noise = call("tsv", tensors, base_index=0, shared={"rank_tol": 1e-12}, generator=generator_for(0, "t"))
    assert (with_noise - exact_k).abs().max() > 1e-4  # keeping the noise directions does rotate the tasks


def test_randomised_svd_finds_the_leading_triplets():
    """k ≪ min(shape) takes the randomised path: on a matrix with a decaying spectrum its merge
    equals the full-SVD merge, and it is reproducible from the tensor's seed."""
    g = torch.Generator().manual_seed(4)
    m, n = 320, 280
    spectrum = torch.cat([torch.tensor([8.0, 6.0, 4.0, 3.0]), 1e-3 * torch.rand(n - 4, generator=g)])
    u, _ = torch.linalg.qr(torch.randn(m, n, generator=g))
    v, _ = torch.linalg.qr(torch.randn(n, n, generator=g))
    delta = u @ torch.diag(spectrum) @ v.T
    assert subspace._randomises(4 + subspace.OVERSAMPLE, delta)
    randomised = subspace.top(delta, 4, generator_for(0, "a"))
    full = subspace.exact(delta).head(4)
    torch.testing.assert_close(randomised.s, full.s, rtol=1e-5, atol=0)
    product = lambda t: t.u @ torch.diag(t.s) @ t.vh
    torch.testing.assert_close(product(randomised), product(full), rtol=0, atol=1e-5)
    again = subspace.top(delta, 4, generator_for(0, "a"))
    assert torch.equal(again.u, randomised.u)


@pytest.mark.parametrize("method,shared", [("tsv", {"k": 4}), ("iso_c", {}), ("iso_cts", {})])
def test_large_matrices_by_row_blocks_give_the_same_merge(monkeypatch, method, shared):
    """Above deltas.LARGE elements the task vectors are formed and multiplied by row blocks
    (no whole float32 copy of a vocabulary matrix): the same merge as the whole matrix, to
    float32 rounding."""
    g = torch.Generator().manual_seed(9)
    base = torch.randn(300, 260, generator=g).bfloat16()
    tensors = [base, *((base.float() + lora((300, 260), 3, g)).bfloat16() for _ in range(2))]
    shared = {**shared, "rank_tol": 0.02}  # bf16 inputs: rounding noise near 1e-3 of sigma_1
    whole = call(method, tensors, base_index=0, shared=shared, generator=generator_for(0, "t"))
    monkeypatch.setattr(deltas, "LARGE", 0)
    monkeypatch.setattr(deltas, "BLOCK", 260 * 64)  # 5 row blocks
    blocked = call(method, tensors, base_index=0, shared=shared, generator=generator_for(0, "t"))
    # float32 sums in another order, then bfloat16: a few elements round to the next bf16 value
    torch.testing.assert_close(blocked.float(), whole.float(), rtol=2**-7, atol=1e-6)
    assert (blocked != whole).float().mean() < 0.01
    assert not torch.equal(whole, base)


@pytest.mark.parametrize("rank", [12, 5])
def test_orthonormal_basis_and_thin_svd_of_a_tall_matrix(rank):
    """CholeskyQR2 (rank 12 of 12 columns) or, for dependent columns (rank 5), Householder QR:
    either way an orthonormal basis of the same range; the tall-matrix SVD built on it has
    LAPACK's singular values and reproduces the matrix."""
    g = torch.Generator().manual_seed(11)
    y = torch.randn(400, rank, generator=g, dtype=torch.float64) @ torch.randn(
        rank, 12, generator=g, dtype=torch.float64
    )
    q = subspace.orthonormal(y)
    torch.testing.assert_close(q.mT @ q, torch.eye(12, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(q @ (q.mT @ y), y, rtol=0, atol=1e-10)
    t = subspace.exact(y)
    torch.testing.assert_close(t.s, torch.linalg.svdvals(y), rtol=0, atol=1e-10)
    torch.testing.assert_close(t.u @ torch.diag(t.s) @ t.vh, y, rtol=0, atol=1e-10)


def test_k_is_clamped_to_the_share_of_the_smaller_side():
    tensors = family((6, 40), 2)
    small = call("tsv", tensors, base_index=0, shared={"k": 3}, generator=generator_for(0, "t"))
    large = call("tsv", tensors, base_index=0, shared={"k": 500}, generator=generator_for(0, "t"))
    torch.testing.assert_close(large, small, rtol=0, atol=1e-12)


def test_zero_deltas_give_the_base():
    base = torch.randn(8, 6)
    assert torch.equal(call("tsv", [base, base.clone(), base.clone()], base_index=0), base)


@pytest.mark.parametrize("method,shared", [("tsv", {"k": 3}), ("iso_c", {})])
def test_an_unchanged_model_adds_nothing(method, shared):
    """A model equal to the base (LoRA's embeddings) is skipped before any decomposition: with a
    fixed k its zero task vector would contribute no direction anyway, so the merge is that of
    the other task alone, bit for bit; a model differing in one element is not skipped."""
    base, x = family((30, 24), 1, seed=5)
    alone = call(method, [base, x], base_index=0, shared=shared, generator=generator_for(0, "t"))
    with_copy = call(method, [base, x, base.clone()], base_index=0, shared=shared, generator=generator_for(0, "t"))
    assert torch.equal(with_copy, alone)
    nudged = base.clone()
    nudged[3, 4] += 1.0
    assert deltas.changed([base, x, base.clone(), nudged], 0, [1, 2, 3]) == [1, 3]


def test_merge_and_plan_through_the_cli(capsys, tmp_path, llama_family):
    base, a, b = llama_family
    recipe = write_recipe(tmp_path, RECIPE.format(method="tsv", base=base, a=a, b=b, params="k: 2, alpha: 0.5"))
    code, out, err = cli(capsys, "plan", recipe)
    assert code == 0, err
    assert "tsv" in out and "k" in out and "0.5" in out
    code, _, err = cli(capsys, "merge", recipe, tmp_path / "out", "--quiet")
    assert code == 0, err


@pytest.mark.parametrize(
    "params,fragments",
    [
        ("k: 0", ("'k' = 0", "[1, inf)")),
        ("alpha: -0.5", ("'alpha' = -0.5", "(0, inf)")),
        ("rank_fraction: 1.5", ("'rank_fraction' = 1.5", "(0, 1]")),
        ("k: 2.5", ("'k' = 2.5", "is not an int or null")),
        ("k: '4'", ("'k' = '4'", "is not an int or null")),
        ("rank_fraction: 0", ("'rank_fraction' = 0", "(0, 1]")),
        ("rank_tol: 0", ("'rank_tol' = 0", "(0, 1)")),
        ("alpha: .nan", ("'alpha'", "finite")),
    ],
)
def test_out_of_range_parameters_are_one_error_line(capsys, tmp_path, llama_family, params, fragments):
    base, a, b = llama_family
    merge_fails(capsys, tmp_path, RECIPE.format(method="tsv", base=base, a=a, b=b, params=params), *fragments)


def test_without_a_base_model_is_one_error_line(capsys, tmp_path, llama_family):
    _, a, b = llama_family
    text = f"merge_method: tsv\nmodels:\n  - model: {a}\n  - model: {b}\n"
    line = merge_fails(capsys, tmp_path, text, "base_model")
    assert "tsv" in line


def test_plan_refuses_before_merging(capsys, tmp_path, llama_family):
    base, a, b = llama_family
    recipe = write_recipe(tmp_path, RECIPE.format(method="tsv", base=base, a=a, b=b, params="k: -1"))
    assert_one_error_line(*cli(capsys, "plan", recipe), "'k' = -1")
