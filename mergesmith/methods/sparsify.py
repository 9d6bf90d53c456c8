"""Sparsifiers for task vectors (deltas): which entries of a delta survive.

- magnitude (TIES, arXiv:2306.01708 step "trim"): keep the ``k = max(1, ⌊density·n⌋)``
  entries of largest magnitude.
- random (DARE, arXiv:2311.03099 step "drop"): keep each entry with probability ``density``.
- outliers (Model Breadcrumbs, arXiv:2312.06795): sort by magnitude, drop the ``⌊γ·n⌋``
  largest (outliers) and the smallest so that ``⌊density·n⌋`` survive; fewer outliers are
  dropped when ``density + γ > 1``.
- magprune (DELLA, arXiv:2406.11617 step "MagPrune"): within each row, entry of magnitude
  rank ``r`` (1 = smallest, of ``m``) is kept with probability
  ``p_r = density - ε + 2ε·(r - 1)/(m - 1)``.
Kept entries are rescaled (``rescale``): ``false`` leaves them; ``true`` scales them so the
delta's L1 norm is unchanged (mergekit); ``paper`` (random sparsifiers only) divides each by
its keep probability, ``1/density`` (DARE) or ``1/p_r`` (DELLA), which keeps the expected
delta unchanged as the papers do.
"""

from __future__ import annotations

from typing import Literal, Union

from mergesmith._torch import torch
from mergesmith.errors import ConfigError
from mergesmith.methods.topk import top_k_mask, top_k_mask_like_mergekit

RESCALE_EPS = 1e-7
PAPER = "paper"
Rescale = Union[bool, Literal["paper"]]


def rescale_l1(masked: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """``masked · |original|₁ / |masked|₁``, unless either norm is ~0."""
    before = original.abs().sum()
    after = masked.abs().sum()
    if before < RESCALE_EPS or after < RESCALE_EPS:
        return masked
    return masked * (before / after)


def magnitude(
    delta: torch.Tensor, density: float, rescale: bool, generator=None, tie_break: str = "index"
) -> torch.Tensor:
    """Keep the ``max(1, ⌊density·n⌋)`` largest |delta|; see topk.py for the tie rules."""
    if density >= 1:
        return delta
    if density <= 0 or delta.numel() == 0:
        return torch.zeros_like(delta)
    k = max(1, int(density * delta.numel()))
    select = top_k_mask if tie_break == "index" else top_k_mask_like_mergekit
    masked = delta * select(delta, k).to(delta.dtype)
    return rescale_l1(masked, delta) if rescale else masked


def random(
    delta: torch.Tensor, density: float, rescale: Rescale, generator: torch.Generator | None = None
) -> torch.Tensor:
    if density >= 1:
        return delta
    if density <= 0:
        return torch.zeros_like(delta)
    work = _work_dtype(delta)
    mask = _bernoulli(torch.full(delta.shape, density, dtype=_draw_dtype(delta.dtype)), generator).to(
        delta.device, work
    )
    original = delta.to(work)
    return rescale_kept(original * mask, original, rescale, density).to(delta.dtype)


def _bernoulli(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Draws on the CPU, where the per-tensor generator lives: a merge on a GPU draws the same mask."""
    return torch.bernoulli(probs, generator=generator)


def _draw_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype masks are drawn in on the CPU: what ``_work_dtype`` picks there."""
    return torch.bfloat16 if dtype == torch.bfloat16 else torch.float32


def _work_dtype(delta: torch.Tensor) -> torch.dtype:
    # torch.bernoulli has no fp16 CPU kernel: work in fp32 there (bf16 stays bf16).
    on_cpu = delta.device.type == "cpu"
    return torch.float32 if on_cpu and delta.dtype != torch.bfloat16 else delta.dtype


def rescale_kept(masked: torch.Tensor, original: torch.Tensor, rescale: Rescale, keep_prob) -> torch.Tensor:
    """The rescale step shared by the sparsifiers (see the module docstring)."""
    if rescale == PAPER:
        return masked / keep_prob
    return rescale_l1(masked, original) if rescale else masked


def outliers(delta: torch.Tensor, density: float, rescale: bool, generator=None, *, gamma: float) -> torch.Tensor:
    if density >= 1:
        return delta
    n = delta.numel()
    keep = max(0, int(density * n))
    # A negative gamma would push the kept window past the largest entry (mergekit then
    # keeps fewer entries, or none): it drops no outliers instead.
    top = max(0, int(gamma * n))
    bottom = max(0, n - keep - top)
    scores = delta.abs().reshape(-1)
    if scores.device.type == "cpu":
        scores = scores.float()
    ascending = torch.sort(scores).indices
    mask = torch.zeros(n, dtype=delta.dtype, device=delta.device)
    mask[ascending[bottom : bottom + keep]] = 1
    masked = delta * mask.reshape_as(delta)
    return rescale_l1(masked, delta) if rescale else masked


def check_magprune(density: float, where: str = "", *, epsilon: float) -> None:
    """DELLA's keep probabilities ``density ± ε`` must lie in (0, 1) when 0 < density < 1."""
    low, high = sorted((density - epsilon, density + epsilon))
    if 0 < density < 1 and not (0 < low and high < 1):
        raise ConfigError(
            f"{where}della: density {density} with epsilon {epsilon} gives keep probabilities "
            f"[{low:g}, {high:g}], outside (0, 1); choose |epsilon| < {min(density, 1 - density):g}"
        )


def magprune(
    delta: torch.Tensor, density: float, rescale: Rescale, generator: torch.Generator | None = None, *, epsilon: float
) -> torch.Tensor:
    if density >= 1:
        return delta
    if density <= 0:
        return torch.zeros_like(delta)
    check_magprune(density, epsilon=epsilon)
    work = _work_dtype(delta)
    rows = delta if delta.dim() >= 2 else delta.unsqueeze(0)
    ranks = rows.abs().argsort(dim=1).argsort(dim=1).to(work) + 1
    lowest = ranks.min(dim=1, keepdim=True).values
    highest = ranks.max(dim=1, keepdim=True).values
    position = ((ranks - lowest) / (highest - lowest)).clamp(0, 1)
    probs = (density - epsilon) + position * 2 * epsilon
    mask = _bernoulli(probs.to("cpu", _draw_dtype(probs.dtype)), generator).to(probs.device, work)
    original = rows.to(work)
    return rescale_kept(original * mask, original, rescale, probs).to(delta.dtype).reshape(delta.shape)
