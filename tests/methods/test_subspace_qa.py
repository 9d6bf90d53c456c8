"""tsv, iso_c, iso_cts as a demanding user meets them: k and rank_fraction at their edges (and in
the plan), the common-subspace split at its edges, small and non-square matrices against an exact
full-SVD TSV, the randomised SVD against it, half-precision inputs, non-finite inputs, the worker
count, and the errors of a one-model recipe."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from calls import RECIPE, call
from cli_helpers import (
    assert_one_error_line,
    cli,
    copy_model,
    digest,
    merge_fails,
    output_tensors,
    rewrite_tensors,
    write_recipe,
)
from safetensors.torch import save_file

from mergesmith.execute.runner import generator_for
from mergesmith.methods import iso, subspace
from mergesmith.methods.registry import METHODS


def exact_tsv(deltas: list[torch.Tensor], k: int) -> torch.Tensor:
    """TSV-Merge's merged task vector (Gargiulo et al., CVPR 2025) from full float64 SVDs: each
    task's k leading triplets, U and V concatenated and replaced by their orthogonal polar factors."""
    parts = [torch.linalg.svd(d.double(), full_matrices=False) for d in deltas]
    u = torch.cat([p.U[:, :k] for p in parts], dim=1)
    s = torch.cat([p.S[:k] for p in parts])
    vh = torch.cat([p.Vh[:k] for p in parts], dim=0)
    polar = lambda a: (lambda t: t.U @ t.Vh)(torch.linalg.svd(a, full_matrices=False))  # noqa: E731
    return polar(u) @ torch.diag(s) @ polar(vh.mT).mT


def gaussian_family(shape, tasks: int, seed: int, dtype=torch.float32) -> list[torch.Tensor]:
    """A base and full-rank fine-tunes: flat-ish (Marchenko–Pastur) spectra, the hard case for a
    truncated SVD, whose k-th and (k+1)-th singular values are close."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    return [x.to(dtype) for x in (base, *(base + 0.05 * torch.randn(shape, generator=g) for _ in range(tasks)))]


def merged(method: str, tensors, **shared) -> torch.Tensor:
    return call(method, tensors, base_index=0, shared=shared, generator=generator_for(0, "t"))


def task_vectors(tensors) -> list[torch.Tensor]:
    return [x.double() - tensors[0].double() for x in tensors[1:]]


# k ≪ min(shape) on small matrices: the full SVD costs as little as a sketch there and its
# triplets are exact. float32 inputs: ~1e-5 relative is float32 SVD rounding (a truncated SVD
# from one power iteration is off by 0.9 here).
@pytest.mark.parametrize(
    "shape,tasks,k", [((64, 64), 2, 2), ((48, 160), 3, 3), ((200, 40), 2, 4), ((128, 96), 4, 1), ((96, 96), 3, 5)]
)
def test_small_matrices_match_an_exact_full_svd_tsv(shape, tasks, k):
    tensors = gaussian_family(shape, tasks, seed=k)
    want = exact_tsv(task_vectors(tensors), k)
    got = merged("tsv", tensors, k=k, alpha=0.7).double() - tensors[0].double()
    assert float((got - 0.7 * want).norm() / (0.7 * want).norm()) < 5e-5


def decaying(m: int, n: int, g: torch.Generator, power: float) -> torch.Tensor:
    """A task vector with singular values i^-power: no gap after any k."""
    r = min(m, n)
    u, _ = torch.linalg.qr(torch.randn(m, r, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, r, generator=g, dtype=torch.float64))
    return u @ torch.diag(torch.arange(1, r + 1, dtype=torch.float64) ** -power) @ v.T


@pytest.mark.parametrize("power,bound", [(1.0, 0.02), (2.0, 2e-4)])
def test_randomised_tsv_is_close_to_the_exact_one(power, bound):
    """Large matrices take the randomised SVD (one power iteration): on spectra without a gap it
    is an approximation, and this is how close (measured 0.6% and 4e-5; without the power
    iteration 18% and 1.2%)."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(320, 288, generator=g, dtype=torch.float64)
    tensors = [base.float(), *((base + decaying(320, 288, g, power)).float() for _ in range(2))]
    assert subspace._randomises(4 + subspace.OVERSAMPLE, tensors[0])
    want = exact_tsv(task_vectors(tensors), 4)
    out = merged("tsv", tensors, k=4)
    got = out.double() - tensors[0].double()
    assert float((got - want).norm() / want.norm()) < bound
    assert torch.equal(merged("tsv", tensors, k=4), out)  # the tensor's seed, the same draws


def test_a_small_rank_fraction_still_keeps_one_direction_per_task():
    """rank_fraction 0.02 of a 64-wide matrix over 2 tasks is 0.64 directions: k becomes 1, not 0
    (0 would write the base, silently dropping every task)."""
    tensors = gaussian_family((64, 64), 2, seed=1)
    got = merged("tsv", tensors, rank_fraction=0.02)
    assert not torch.equal(got, tensors[0])
    torch.testing.assert_close(got, merged("tsv", tensors, k=1), rtol=0, atol=0)
    assert torch.equal(merged("tsv", tensors, rank_fraction=0.5), merged("tsv", tensors, k=16))


def test_neither_k_nor_rank_fraction_is_the_references_share():
    tensors = gaussian_family((40, 30), 3, seed=2)
    torch.testing.assert_close(merged("tsv", tensors), merged("tsv", tensors, k=10), rtol=0, atol=0)


def test_a_matrix_narrower_than_the_task_count_takes_the_mean_task_vector():
    """A (2, 30) matrix and 3 tasks: no direction per task fits; the mean task vector, as for 1-D
    tensors, instead of dropping the tensor's change."""
    tensors = gaussian_family((2, 30), 3, seed=3, dtype=torch.float64)
    want = tensors[0] + 0.5 * sum(task_vectors(tensors)) / 3
    torch.testing.assert_close(merged("tsv", tensors, alpha=0.5), want, rtol=0, atol=1e-12)


def test_k_beyond_the_matrix_is_clamped_to_its_share():
    tensors = gaussian_family((24, 40), 3, seed=4)
    torch.testing.assert_close(merged("tsv", tensors, k=1000), merged("tsv", tensors, k=8), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("method", ["tsv", "iso_c", "iso_cts"])
def test_half_precision_inputs_compute_in_float32_and_return_their_dtype(method, dtype):
    tensors = gaussian_family((48, 40), 2, seed=5, dtype=dtype)
    got = merged(method, tensors)
    assert got.dtype == dtype
    want = merged(method, [x.float() for x in tensors])  # the same inputs, widened
    torch.testing.assert_close(got.float(), want.to(dtype).float(), rtol=2 * torch.finfo(dtype).eps, atol=1e-6)


def test_iso_cts_split_fills_the_rank_exactly():
    for rank in range(1, 40):
        for tasks in (2, 3, 4, 5):
            for fraction in (0.0, 0.05, 0.3, 0.5, 0.8, 0.95, 1.0):
                common, per_task = iso.split(rank, tasks, fraction)
                assert common >= 0 and per_task >= 0 and common + tasks * per_task == rank, (rank, tasks, fraction)
                if fraction == 1.0:
                    assert per_task == 0  # everything common: Iso-C


def test_iso_cts_with_no_common_share_and_an_odd_rank():
    """Two tasks of rank 3 and 4 (sum of rank 7), common_space_fraction 0: the reference's
    rounding asks for 4 directions per task and a common size of -1 (its slice [:-1] then keeps 6
    common directions, 14 in all for a rank-7 sum); here 1 common and 3 per task. The merge has
    exactly the sum's rank, with a flat spectrum."""
    g = torch.Generator().manual_seed(6)
    low = lambda r: (
        torch.randn(40, r, generator=g, dtype=torch.float64)
        @ torch.randn(  # noqa: E731
            r, 30, generator=g, dtype=torch.float64
        )
    )
    base = torch.randn(40, 30, generator=g, dtype=torch.float64)
    assert iso.split(7, 2, 0.0) == (1, 3)
    out = merged("iso_cts", [base, base + low(3), base + low(4)], common_space_fraction=0.0) - base
    s = torch.linalg.svdvals(out)
    assert float(s[7]) < 1e-10 * float(s[0])
    torch.testing.assert_close(s[:7], torch.full_like(s[:7], float(s[0])), rtol=1e-10, atol=0)


@pytest.mark.parametrize("method", ["tsv", "iso_c", "iso_cts"])
def test_the_base_alone_is_one_error_line(capsys, tmp_path, llama_family, method):
    base = llama_family[0]
    text = f"merge_method: {method}\nbase_model: {base}\nmodels:\n  - model: {base}\n"
    merge_fails(capsys, tmp_path, text, method, "at least 2 models", str(base))


def test_k_and_rank_fraction_together_are_one_error_line(capsys, tmp_path, llama_family):
    base, a, b = llama_family
    text = RECIPE.format(method="tsv", base=base, a=a, b=b, params="k: 4, rank_fraction: 0.5")
    line = merge_fails(capsys, tmp_path, text, "'k' (4)", "'rank_fraction' (0.5)", "give one")
    assert str(tmp_path / "recipe.yml") in line
    recipe = write_recipe(tmp_path, text, "again.yml")
    assert_one_error_line(*cli(capsys, "plan", recipe), "give one")


@pytest.mark.parametrize("shape", [(64, 48), (300, 280), (600, 40)])  # full SVD, randomised, tall
@pytest.mark.parametrize("method,shared", [("tsv", {"k": 4}), ("tsv", {}), ("iso_c", {}), ("iso_cts", {})])
def test_a_non_finite_input_gives_a_non_finite_merge_not_an_exception(method, shared, shape):
    """LAPACK raises on NaN or infinity (and MKL prints to stderr), and a NaN rank floor once kept
    no direction at all, writing the base: the NaN must reach the output, where the runner's check
    names the input."""
    tensors = gaussian_family(shape, 2, seed=7)
    for bad in (float("nan"), float("inf")):
        poisoned = [tensors[0], tensors[1].clone(), tensors[2]]
        poisoned[1][5, 7] = bad
        assert not torch.isfinite(merged(method, poisoned, **shared)).all()


@pytest.mark.parametrize("method", ["tsv", "iso_c", "iso_cts"])
def test_an_infinite_input_is_one_error_line_naming_model_and_tensor(capsys, tmp_path, llama_family, method):
    ft = copy_model(llama_family[1], tmp_path / "ft")
    name = "model.layers.1.self_attn.q_proj.weight"
    rewrite_tensors(ft, lambda tensors: tensors[name].__setitem__((3, 3), float("inf")))
    before = digest(ft)
    text = RECIPE.format(method=method, base=llama_family[0], a=ft, b=llama_family[2], params="alpha: 1.0")
    merge_fails(capsys, tmp_path, text, f"model '{ft}'", name, "NaN or infinite")
    assert digest(ft) == before


def test_alpha_has_a_search_range_of_its_own():
    """`alpha: search` works for the subspace merges; regmean's alpha (a Gram blend) is another
    quantity and keeps needing a range, or its own."""
    for method in ("tsv", "iso_c", "iso_cts"):
        low, high = METHODS[method].param("alpha").search_bounds
        assert 0 < low < 1 < high and low in METHODS[method].param("alpha").domain


def test_plan_shows_the_k_each_matrix_will_take(capsys, tmp_path, llama_family):
    """rank_fraction is settled into each matrix's k at plan time: pico q_proj is 64 × 64,
    k_proj 32 × 64, embed_tokens 300 × 64; norms take the mean delta (k null)."""
    base, a, b = llama_family
    for params, want in [
        ("rank_fraction: 0.5", {"q_proj": 16, "k_proj": 8, "embed_tokens": 16}),
        ("k: 16", {"q_proj": 16, "k_proj": 16, "embed_tokens": 16}),
        ("", {"q_proj": 32, "k_proj": 16, "embed_tokens": 32}),
        ("rank_fraction: 0.01", {"q_proj": 1, "k_proj": 1, "embed_tokens": 1}),
    ]:
        recipe = write_recipe(tmp_path, RECIPE.format(method="tsv", base=base, a=a, b=b, params=params))
        code, out, err = cli(capsys, "plan", recipe, "--json")
        assert code == 0, err
        k = {t["output"]: t["parameters"]["k"] for t in json.loads(out)["tensors"]}
        assert k["model.layers.0.self_attn.q_proj.weight"] == want["q_proj"]
        assert k["model.layers.2.self_attn.k_proj.weight"] == want["k_proj"]
        assert k["model.embed_tokens.weight"] == want["embed_tokens"]
        assert k["model.norm.weight"] is None and k["model.layers.1.input_layernorm.weight"] is None
    code, out, _ = cli(capsys, "plan", recipe)
    assert code == 0 and "mlp.up_proj.weight +4: 1\n" in out and "post_attention_layernorm.weight: None" in out


@pytest.mark.parametrize("k", [17, 1000])
def test_k_that_does_not_fit_a_matrix_is_one_error_line(capsys, tmp_path, llama_family, k):
    """Two tasks of 17 directions do not fit pico's 32 × 64 k_proj (the library call clamps, see
    test_k_beyond_the_matrix_is_clamped_to_its_share; a recipe says so before merging)."""
    base, a, b = llama_family
    text = RECIPE.format(method="tsv", base=base, a=a, b=b, params=f"k: {k}")
    shape = "32 × 64" if k == 17 else "300 × 64"  # the first matrix planned that k overflows
    bound = "k ≤ 16" if k == 17 else "k ≤ 32"
    merge_fails(capsys, tmp_path, text, f"k = {k}", shape, bound, "rank_fraction")


@pytest.fixture(scope="module")
def wide_family(llama_family, tmp_path_factory):
    """A one-layer llama 256 wide (pico's config and tokenizer, hidden 256): its matrices are wide
    enough for the randomised SVD. Fine-tunes: two full-rank, one rank 8."""
    root = tmp_path_factory.mktemp("wide")
    config = json.loads((llama_family[0] / "config.json").read_text())
    config.update(hidden_size=256, intermediate_size=512, num_hidden_layers=1, head_dim=64)
    hidden, inner, vocab = 256, 512, config["vocab_size"]
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,)}
    shapes |= {"lm_head.weight": (vocab, hidden), "model.layers.0.input_layernorm.weight": (hidden,)}
    shapes |= {"model.layers.0.post_attention_layernorm.weight": (hidden,)}
    for name, shape in [("q", (256, 256)), ("k", (128, 256)), ("v", (128, 256)), ("o", (256, 256))]:
        shapes[f"model.layers.0.self_attn.{name}_proj.weight"] = shape
    for name, shape in [("gate", (inner, hidden)), ("up", (inner, hidden)), ("down", (hidden, inner))]:
        shapes[f"model.layers.0.mlp.{name}_proj.weight"] = shape
    g = torch.Generator().manual_seed(0)
    base = {k: 0.02 * torch.randn(s, generator=g) for k, s in shapes.items()}

    def low_rank(v):
        return torch.randn(v.shape[0], 8, generator=g) @ torch.randn(8, v.shape[1], generator=g) * 0.01

    tunes = [{k: v + 0.002 * torch.randn(v.shape, generator=g) for k, v in base.items()} for _ in range(2)]
    tunes.append({k: v + (low_rank(v) if v.dim() == 2 else 0.0) for k, v in base.items()})
    paths = []
    for i, tensors in enumerate([base, *tunes]):
        path = root / f"m{i}"
        path.mkdir()
        for f in llama_family[0].iterdir():
            if f.name not in ("model.safetensors", "config.json"):
                shutil.copy(f, path / f.name)
        (path / "config.json").write_text(json.dumps(config))
        save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
        paths.append(path)
    return paths


@pytest.mark.parametrize("method,params", [("tsv", "k: 4"), ("iso_c", "alpha: 1.0"), ("iso_cts", "alpha: 1.0")])
def test_randomised_merges_do_not_depend_on_workers(capsys, tmp_path, wide_family, method, params):
    base, *models = wide_family
    listed = "".join(f"  - model: {m}\n" for m in models)
    text = f"merge_method: {method}\nbase_model: {base}\nmodels:\n{listed}parameters: {{{params}}}\ndtype: float32\n"
    recipe = write_recipe(tmp_path, text)
    outs = []
    for workers in ("1", "3"):
        code, _, err = cli(capsys, "merge", recipe, tmp_path / workers, "--quiet", "--workers", workers, "--seed", "5")
        assert code == 0, err
        outs.append(output_tensors(tmp_path / workers))
    assert outs[0].keys() == outs[1].keys()
    assert all(torch.equal(outs[0][k], outs[1][k]) for k in outs[0])
    q = "model.layers.0.self_attn.q_proj.weight"
    assert subspace._randomises(4 + subspace.OVERSAMPLE, outs[0][q])
