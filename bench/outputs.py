"""Cheap correctness checks of merged outputs, so that a fast but wrong merge cannot pass.

    snapshot(model_dir, shape) -> Snapshot     every tensor name + a few sampled tensors
    check_merge(method, ours, inputs, ref)     list of Check

Three checks per method: the output has exactly the input's tensor names in bf16; sampled
matrices match the method's formula computed here in float64 (error relative to the size of
the merge's own change, so returning either input fails); and, when mergekit ran, every sampled
tensor agrees with mergekit's within 1 ulp (for ties: except entries tied at the density
threshold, which the two tools' tie rules may keep differently). Reads safetensors directly.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from safetensors import safe_open

# ||ours - formula|| / ||formula - base||. bf16 rounding of the output gives ~0.01 with the
# synthetic noise level; lerp instead of slerp gives ~0.1, returning either input gives >= 1.
FORMULA_TOLERANCE = 0.05
SLERP_T, TIES_DENSITY = 0.5, 0.5


@dataclass(frozen=True)
class Snapshot:
    names: dict[str, str]  # every tensor -> its safetensors dtype
    tensors: dict[str, torch.Tensor]  # the sampled ones


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


def sampled_names(layers: int) -> tuple[list[str], list[str]]:
    """(matrices checked against the formula, norms compared with mergekit only).

    Norms sit around 1.0 where a bf16 ulp (0.008) is the size of the synthetic delta, so a
    formula check there would measure rounding, not the merge.
    """
    last, mid = layers - 1, layers // 2
    matrices = [
        "model.layers.0.self_attn.k_proj.weight",
        f"model.layers.{mid}.self_attn.q_proj.weight",
        f"model.layers.{last}.mlp.down_proj.weight",
    ]
    return matrices, ["model.norm.weight", f"model.layers.{mid}.input_layernorm.weight"]


def _shards(model_dir: Path) -> list[Path]:
    return sorted(model_dir.glob("*.safetensors"))


def snapshot(model_dir: Path, layers: int) -> Snapshot:
    wanted = set(sum(sampled_names(layers), []))
    names, tensors = {}, {}
    for shard in _shards(model_dir):
        with open(shard, "rb") as f:
            header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
        header.pop("__metadata__", None)
        names.update({k: v["dtype"] for k, v in header.items()})
        with safe_open(str(shard), framework="pt") as handle:
            tensors.update({k: handle.get_tensor(k) for k in wanted & header.keys()})
    return Snapshot(names, tensors)


def slerp_formula(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """mergekit's slerp: angle between the flattened tensors, lerp when nearly parallel."""
    a, b = a.double(), b.double()
    dot = float((a / a.norm()).flatten() @ (b / b.norm()).flatten())
    if abs(dot) > 0.9995:
        return (1 - t) * a + t * b
    theta = math.acos(dot)
    return (math.sin((1 - t) * theta) * a + math.sin(t * theta) * b) / math.sin(theta)


def ties_formula(a: torch.Tensor, b: torch.Tensor, density: float) -> torch.Tensor:
    """TIES with one fine-tune: keep the top ``density`` of |delta|; sign election and the
    normalized disjoint mean then leave the kept delta as it is. The delta is rounded to bf16,
    the recipe's dtype, so that the magnitude mask sees the values both tools see."""
    delta = (b.float() - a.float()).to(torch.bfloat16).double().flatten()
    keep = torch.zeros_like(delta)
    keep[delta.abs().topk(int(density * delta.numel())).indices] = 1.0
    return a.double() + (delta * keep).view(a.shape)


def formula_error(method: str, out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> float:
    if method == "slerp":
        expected = slerp_formula(a, b, SLERP_T)
    else:
        expected = ties_formula(a, b, TIES_DENSITY)
    return float((out.double() - expected).norm() / (expected - a.double()).norm())


def ulp_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Elementwise distance in bf16 ulps (bit patterns mapped onto a monotone integer line)."""

    def line(t: torch.Tensor) -> torch.Tensor:
        bits = t.to(torch.bfloat16).view(torch.int16).to(torch.int32)
        return torch.where(bits < 0, -(bits & 0x7FFF), bits)

    return (line(x) - line(y)).abs()


def check_merge(method: str, ours: Snapshot, a: Snapshot, b: Snapshot, mergekit: Optional[Snapshot]) -> list[Check]:
    bad = sorted(n for n, d in ours.names.items() if d != "BF16")
    complete = set(ours.names) == set(a.names) and not bad
    checks = [
        Check(
            f"{method}: tensor names and bf16",
            complete,
            f"{len(ours.names)} tensors, {len(a.names)} in input, non-bf16: {bad[:3]}",
        )
    ]
    matrices = [n for n, t in a.tensors.items() if t.dim() == 2]
    errors = {n: formula_error(method, ours.tensors[n], a.tensors[n], b.tensors[n]) for n in matrices}
    worst = max(errors.values())
    checks.append(
        Check(
            f"{method}: matches formula",
            worst <= FORMULA_TOLERANCE,
            f"max relative error {worst:.4f} (limit {FORMULA_TOLERANCE}) over {len(errors)} matrices",
        )
    )
    if mergekit is not None:
        checks.append(_against_mergekit(method, ours, mergekit, a, b))
    return checks


def threshold_ties(a: torch.Tensor, b: torch.Tensor, density: float) -> torch.Tensor:
    """Entries whose bf16 |delta| equals the k-th largest: where TIES tie rules may differ
    (mergesmith keeps the lowest indices; mergekit whatever its unstable sort puts first)."""
    magnitude = (b.float() - a.float()).to(torch.bfloat16).float().abs().flatten()
    kth = magnitude.topk(int(density * magnitude.numel())).values[-1]
    return (magnitude == kth).view(a.shape)


def _against_mergekit(method: str, ours: Snapshot, theirs: Snapshot, a: Snapshot, b: Snapshot) -> Check:
    exact = within_one = at_ties = worse = 0
    worst = 0
    for name, tensor in ours.tensors.items():
        d = ulp_distance(tensor, theirs.tensors[name])
        if method == "ties":
            ties = threshold_ties(a.tensors[name], b.tensors[name], TIES_DENSITY)
            at_ties += int(((d > 0) & ties).sum())
            d = torch.where(ties, torch.zeros_like(d), d)
        exact += int((d == 0).sum())
        within_one += int((d == 1).sum())
        worse += int((d > 1).sum())
        worst = max(worst, int(d.max()))
    detail = (
        f"{len(ours.tensors)} tensors: {exact} elements exact, {within_one} within 1 ulp, "
        f"{worse} further (max {worst} ulp)"
    )
    if method == "ties":
        detail += f"; {at_ties} differ only at threshold ties (tie rule, see README)"
    return Check(f"{method}: agrees with mergekit", worse == 0, detail)
