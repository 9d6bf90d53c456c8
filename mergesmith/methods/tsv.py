"""TSV-Merge (Gargiulo et al., CVPR 2025, "Task Singular Vectors: Reducing Task Interference in
Model Merging", arXiv:2412.00081; TSV-Merge as the authors'
code ``AntoAndGar/task_singular_vectors`` computes it).

With base ``b``, ``T`` task deltas ``δ_i = x_i − b`` and, per matrix, the ``k`` leading singular
triplets ``δ_i ≈ U_i S_i V_iᵀ``:

    U = [U_1 … U_T],  S = diag(S_1 … S_T),  V = [V_1 … V_T]
    U ← P_U Q_Uᵀ  from svd(U) = P_U Σ Q_Uᵀ      (the orthogonal polar factor; same for V)
    out = b + alpha · U S Vᵀ

``k`` per task is the recipe's ``k`` or ``floor(rank_fraction · min(m, n) / T)`` (the reference's
``1 / T`` of the rank is ``rank_fraction`` 1), at most ``min(m, n) // T`` so that the ``T·k``
directions fit, and at most each delta's numerical rank (subspace.py): a LoRA delta's singular
vectors past its rank span rounding noise in arbitrary directions, and orthogonalising against
them would rotate the other tasks' real directions. Full-rank deltas are unaffected, as in the
reference. The leading triplets come from a seeded randomised SVD where ``k`` ≪ min(m, n).

Tensors that are not matrices (norms, biases) take ``b + alpha · mean_i δ_i``, as the reference
(``AntoAndGar/task_singular_vectors``, ``compute_and_sum_svd_mem_reduction``), whose merged task
vector is then scaled as a whole. Every 2-D tensor is a matrix here, the embeddings and the
lm_head included: the reference applies the SVD to every 2-D tensor of its networks (positional
embeddings included) and exempts only CLIP's ``text_projection``, which an LLM does not have; a
delta that is zero (a tensor no task changed, e.g. the embeddings under LoRA) stays zero.
"""

from __future__ import annotations

from mergesmith._torch import torch
from mergesmith.methods import deltas, subspace
from mergesmith.methods.params import Params
from mergesmith.methods.spec import FRACTION, BasePolicy, Interval, MethodSpec, Param
from mergesmith.methods.steps import WholeTensor, fixed

POSITIVE = Interval(0.0, float("inf"), low_open=True, high_open=True)
COUNT = Interval(1, float("inf"), high_open=True)
ALPHA = Param("alpha", float, default=1.0, doc="scale of the merged task vector", domain=POSITIVE)
RANK_TOL = Param(
    "rank_tol",
    float | None,
    default=None,
    doc="singular values below rank_tol·σ₁ are rounding noise, not rank (null: max(m, n)·float32 epsilon)",
    domain=Interval(0.0, 1.0, low_open=True, high_open=True),
)


def rank_per_task(shape, tasks: int, params: Params) -> int:
    """``k`` of each task for a matrix of ``shape``: the recipe's, or its share of the rank."""
    small = min(shape)
    wanted = params.k if params.k is not None else int(params.rank_fraction * small / tasks)
    return min(wanted, small // tasks)


def tsv(tensors, base_index, params: Params, generator=None) -> torch.Tensor:
    base = tensors[base_index]
    others = [i for i in range(len(tensors)) if i != base_index]
    if not others:
        return base
    if base.dim() != 2:
        return subspace.mean_delta(tensors, base_index, others, params.alpha)
    k = rank_per_task(base.shape, len(others), params)
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
        Param("k", int | None, default=None, doc="singular triplets kept per task; null: rank_fraction", domain=COUNT),
        Param(
            "rank_fraction",
            float,
            default=1.0,
            doc="share of min(m, n) split over the tasks when k is null",
            domain=FRACTION,
        ),
        RANK_TOL,
    ),
    base=BasePolicy.REQUIRED,
    random=True,
)
