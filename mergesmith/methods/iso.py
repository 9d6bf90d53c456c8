"""Iso-C and Iso-CTS (Marczak et al., ICML 2025, "No Task Left Behind: Isotropic Model Merging
with Common and Task-Specific Subspaces", arXiv:2502.04959; the equations
as the authors' code ``danielm1405/iso-merging`` computes them).

With base ``b``, ``T`` task deltas ``δ_i = x_i − b`` and their sum ``Δ = Σ_i δ_i = U Σ Vᵀ``:

    iso_c:    out = b + alpha · σ̄ U_r V_rᵀ,  σ̄ = mean(σ_1 … σ_r)

the spectrum of the sum flattened over its rank ``r``: ``U_r V_rᵀ`` is the orthogonal polar factor
of ``Δ``. Iso-CTS keeps the ``c`` leading directions of the sum and adds each task's own:

    s = min(round((r − int(f · r)) / T), ⌊r / T⌋),  c = r − T · s     (f: common_space_fraction)
    δ_i' = δ_i − U_c U_cᵀ δ_i,  its s leading triplets U_i' S_i' V_i'ᵀ
    U = polar([U_1' … U_T' U_c]),  V = polar([V_1' … V_T' V_c]),  σ̄ = mean([S_1' … S_T' Σ_c])
    iso_cts:  out = b + alpha · σ̄ U Vᵀ

"Rank" ``r`` is the numerical rank of ``Δ`` (subspace.py): the reference flattens over all
min(m, n) singular values, which for full fine-tunes is the same thing. A sum of LoRA deltas
(rank ≤ Σ r_i) has a tail of rounding noise beyond its rank: flattening over min(m, n) would set
those noise directions to σ̄ and shrink σ̄ by min(m, n) / r, so they are left out, and so are a
task's projected directions past its own numerical rank. The polar factor over a small rank comes
from a seeded randomised range finder that stops once the residual is under the rank's floor; a
full-rank sum takes one full SVD (on 2048² float32 on this CPU, 1.2 s against 3.4 s for the
Gram and its eigh; Newton–Schulz needs some ten iterations of two such products each).

With two tasks, Iso-CTS is ill-conditioned: ``(I − U_c U_cᵀ) δ_1 + (I − U_c U_cᵀ) δ_2`` is the sum's
small tail, so the two tasks' own directions nearly coincide (opposite signs) and the polar factor
of their concatenation amplifies rounding. On the SmolLM2 specialists, float32 rounding changes
(an exact instead of a randomised SVD) moved a few v_proj matrices by up to a third, the
perplexity by < 0.01%; the reference has the same property. ``T`` counts every model but the
base, one equal to the base included, as in the reference.

Tensors that are not matrices take ``b + alpha · mean_i δ_i``, as the reference
(``danielm1405/iso-merging``, ``src/utils/iso.py``) before its merged task vector is scaled as a
whole; every 2-D tensor is a matrix, embeddings and lm_head included (see tsv.py).
"""

from __future__ import annotations

from mergesmith._torch import torch
from mergesmith.methods import deltas, subspace
from mergesmith.methods.params import Params
from mergesmith.methods.spec import UNIT, BasePolicy, MethodSpec, Param
from mergesmith.methods.steps import WholeTensor, fixed
from mergesmith.methods.tsv import ALPHA, RANK_TOL


def _flat(t: subspace.Triplets) -> subspace.Triplets:
    """The spectrum set to its mean: the isotropic step of both methods."""
    return subspace.Triplets(t.u, torch.full_like(t.s, float(t.s.mean())) if len(t) else t.s, t.vh)


def _start(tensors, base_index, params: Params):
    """``(done, tasks, rank tolerance)``: ``done`` is the merge where there is no matrix to
    decompose (no task: the base; a 1-D tensor: the scaled mean delta), else None."""
    others = [i for i in range(len(tensors)) if i != base_index]
    base = tensors[base_index]
    if not others:
        return base, others, None
    if base.dim() != 2:
        return subspace.mean_delta(tensors, base_index, others, params.alpha), others, None
    default_tol = subspace.tolerance(base.shape, subspace.work_dtype(base.dtype), None)
    return None, others, params.rank_tol if params.rank_tol is not None else default_tol


def iso_c(tensors, base_index, params: Params, generator=None) -> torch.Tensor:
    base = tensors[base_index]
    done, others, rel_tol = _start(tensors, base_index, params)
    if done is not None:
        return done
    members = deltas.changed(tensors, base_index, others)  # zero deltas add nothing to the sum
    if not members:
        return base
    found = subspace.numerical(deltas.Deltas(tensors, base_index, members), generator, rel_tol)
    return subspace.assemble(base, _flat(found), params.alpha)


def split(rank: int, tasks: int, fraction: float) -> tuple[int, int]:
    """(common, per task) directions of a rank-``rank`` sum, as the reference rounds them, except
    that the task directions never outnumber the rank: where the reference's rounding up asks for
    more (e.g. rank 7, 2 tasks, fraction below 1/7: 4 per task) its common size comes out negative,
    and its slice ``[:-1]`` then keeps all but one direction as "common"."""
    common = int(rank * fraction)
    per_task = min(round((rank - common) / tasks), rank // tasks)
    return rank - per_task * tasks, per_task


def iso_cts(tensors, base_index, params: Params, generator=None) -> torch.Tensor:
    base = tensors[base_index]
    done, others, rel_tol = _start(tensors, base_index, params)
    if done is not None:
        return done
    members = deltas.changed(tensors, base_index, others)  # a zero delta has no directions
    if not members:
        return base
    total = deltas.Deltas(tensors, base_index, members)
    whole = subspace.numerical(total, generator, rel_tol)
    if len(whole) == 0:
        return base.clone()
    floor = rel_tol * float(whole.s[0])
    common_rank, per_task = split(len(whole), len(others), params.common_space_fraction)
    common = whole.head(common_rank)
    parts, memory = [], total.release()
    for i in members:  # each task's part outside the common subspace, (I − U_c U_cᵀ) δ_i
        outside = deltas.Deltas(tensors, base_index, (i,), outside=common.u, into=memory)
        parts.append(subspace.top(outside, per_task, generator).above(floor))
        memory = outside.release()
    merged = subspace.orthogonalised(subspace.concat([*parts, common]))
    return subspace.assemble(base, _flat(merged), params.alpha)


URL = "https://arxiv.org/abs/2502.04959"
SPECS = (
    MethodSpec(
        name="iso_c",
        pretty_name="Isotropic merging in common subspace (Iso-C)",
        reference=URL,
        steps=fixed(WholeTensor(iso_c)),
        params=(ALPHA, RANK_TOL),
        base=BasePolicy.REQUIRED,
        min_inputs=2,  # the base and at least one model: a merge of no task vector is the base
        min_non_base=1,
        random=True,
    ),
    MethodSpec(
        name="iso_cts",
        pretty_name="Isotropic merging in common and task-specific subspaces (Iso-CTS)",
        reference=URL,
        steps=fixed(WholeTensor(iso_cts)),
        params=(
            ALPHA,
            Param(
                "common_space_fraction",
                float,
                default=0.8,
                doc="share of the rank kept from the sum's leading directions; the rest is split over the tasks",
                domain=UNIT,
            ),
            RANK_TOL,
        ),
        base=BasePolicy.REQUIRED,
        min_inputs=2,  # the base and at least one model: a merge of no task vector is the base
        min_non_base=1,
        random=True,
    ),
)
