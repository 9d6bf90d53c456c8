"""TSV-Merge (Gargiulo et al., CVPR 2025, "Task Singular Vectors: Reducing Task Interference in
Model Merging", arXiv:2412.00081; TSV-Merge as the authors'
code ``AntoAndGar/task_singular_vectors`` computes it).

With base ``b``, ``T`` task deltas ``δ_i = x_i − b`` and, per matrix, the ``k`` leading singular
triplets ``δ_i ≈ U_i S_i V_iᵀ``:

    U = [U_1 … U_T],  S = diag(S_1 … S_T),  V = [V_1 … V_T]
    U ← P_U Q_Uᵀ  from svd(U) = P_U Σ Q_Uᵀ      (the orthogonal polar factor; same for V)
    out = b + alpha · U S Vᵀ

``k`` per task is the recipe's ``k`` or ``floor(rank_fraction · min(m, n) / T)`` (one of the two;
neither: ``rank_fraction`` 1, the reference's ``1 / T`` of the rank), at least 1 and at most
``min(m, n) // T`` so that the ``T·k`` directions fit (a recipe ``k`` beyond that is an error at
plan time, the library call clamps it; a matrix with fewer rows or columns than
tasks holds no direction per task: it takes the mean delta, as 1-D tensors do, where the reference
would drop its delta), and at most each delta's numerical rank (subspace.py): a LoRA delta's singular
vectors past its rank span rounding noise in arbitrary directions, and orthogonalising against
them would rotate the other tasks' real directions. Full-rank deltas are unaffected, as in the
reference. The leading triplets come from a seeded randomised SVD where ``k`` ≪ min(m, n) and the
matrix is at least ``subspace.RANDOMISED_MIN_SIDE`` wide, else from the full SVD. ``T`` counts every
model but the base, one equal to the base included, as the reference's ``1 / T`` does.

Tensors that are not matrices (norms, biases) take ``b + alpha · mean_i δ_i``, as the reference
(``AntoAndGar/task_singular_vectors``, ``compute_and_sum_svd_mem_reduction``), whose merged task
vector is then scaled as a whole. Every 2-D tensor is a matrix here, the embeddings and the
lm_head included: the reference applies the SVD to every 2-D tensor of its networks (positional
embeddings included) and exempts only CLIP's ``text_projection``, which an LLM does not have; a
delta that is zero (a tensor no task changed, e.g. the embeddings under LoRA) stays zero.
"""

from __future__ import annotations

import dataclasses

from mergesmith._torch import torch
from mergesmith.errors import ConfigError
from mergesmith.methods import deltas, subspace
from mergesmith.methods.params import Params
from mergesmith.methods.spec import FRACTION, BasePolicy, Interval, MethodSpec, Param
from mergesmith.methods.steps import WholeTensor, fixed

POSITIVE = Interval(0.0, float("inf"), low_open=True, high_open=True)
COUNT = Interval(1, float("inf"), high_open=True)
ALPHA = Param("alpha", float, default=1.0, doc="scale of the merged task vector", domain=POSITIVE, search=(0.1, 2.0))
RANK_TOL = Param(
    "rank_tol",
    float | None,
    default=None,
    doc="singular values below rank_tol·σ₁ are rounding noise, not rank (null: max(m, n)·float32 epsilon)",
    domain=Interval(0.0, 1.0, low_open=True, high_open=True),
)


def rank_per_task(shape, tasks: int, params: Params) -> int:
    """``k`` of each task for a matrix of ``shape``: the recipe's, or its share of the rank; at
    least 1 (a small ``rank_fraction`` must not silently drop a task), at most ``min(shape) // tasks``
    (0 only where not even one direction per task fits)."""
    small = min(shape)
    fraction = 1.0 if params.rank_fraction is None else params.rank_fraction
    wanted = params.k if params.k is not None else int(fraction * small / tasks)
    return min(max(wanted, 1), small // tasks)


def _settle(params: Params, shape: tuple[int, ...], inputs: int, where: str = "") -> Params:
    """The plan's ``k`` of a matrix: what ``tsv`` will take per task (before each task's
    numerical rank, which only the data tells), so that ``plan`` shows it; null where no SVD
    runs (1-D tensors, matrices narrower than the task count: the mean delta). A recipe ``k``
    whose ``T·k`` directions do not fit the matrix is an error."""
    tasks = inputs - 1
    if len(shape) != 2 or tasks < 1 or min(shape) < tasks:
        return dataclasses.replace(params, k=None)
    share = min(shape) // tasks
    if params.k is not None and params.k > share:
        raise ConfigError(
            f"{where}tsv: k = {params.k} directions per task do not fit this {shape[0]} × {shape[1]} matrix "
            f"with {tasks} tasks (at most min(m, n) / tasks = {share}); give k ≤ {share}, or rank_fraction "
            f"for a share of every matrix"
        )
    return dataclasses.replace(params, k=rank_per_task(shape, tasks, params))


def _check(params: Params, where: str) -> None:
    if params.k is not None and params.rank_fraction is not None:
        raise ConfigError(
            f"{where}tsv: both 'k' ({params.k}) and 'rank_fraction' ({params.rank_fraction}) are set; "
            f"give one: k (directions per task) or rank_fraction (share of min(m, n) split over the tasks)"
        )


def tsv(tensors, base_index, params: Params, generator=None) -> torch.Tensor:
    base = tensors[base_index]
    others = [i for i in range(len(tensors)) if i != base_index]
    if not others:
        return base
    if base.dim() != 2:
        return subspace.mean_delta(tensors, base_index, others, params.alpha)
    k = rank_per_task(base.shape, len(others), params)
    if k == 0:  # fewer rows or columns than tasks
        return subspace.mean_delta(tensors, base_index, others, params.alpha)
    rel_tol = subspace.tolerance(base.shape, subspace.work_dtype(base.dtype), params.rank_tol)
    parts, memory = [], None
    for i in deltas.changed(tensors, base_index, others):  # a zero delta has no directions
        delta = deltas.Deltas(tensors, base_index, (i,), into=memory)
        found = subspace.top(delta, k, generator)
        parts.append(found.above(rel_tol * float(found.s[0])) if len(found) else found)
        memory = delta.release()
    if not parts:
        return base
    merged = subspace.orthogonalised(subspace.concat(parts))
    return subspace.assemble(base, merged, params.alpha)


SPEC = MethodSpec(
    name="tsv",
    pretty_name="Task Singular Vectors (TSV-Merge)",
    reference="https://arxiv.org/abs/2412.00081",
    steps=fixed(WholeTensor(tsv)),
    params=(
        ALPHA,
        Param(
            "k",
            int | None,
            default=None,
            doc="singular triplets kept per task, at most min(m, n) / tasks of every matrix; give k or rank_fraction",
            domain=COUNT,
        ),
        Param(
            "rank_fraction",
            float | None,
            default=None,
            doc="share of min(m, n) split over the tasks (at least 1 direction each); null with k null: 1",
            domain=FRACTION,
        ),
        RANK_TOL,
    ),
    base=BasePolicy.REQUIRED,
    min_inputs=2,  # the base and at least one model: a merge of no task vector is the base
    min_non_base=1,
    random=True,
    check=_check,
    settle=_settle,
)
