"""Sparsifiers for task vectors (deltas): which entries of a delta survive.

- magnitude (TIES, arXiv:2306.01708 step "trim"): keep the ``k = max(1, ⌊density·n⌋)``
  entries of largest magnitude.
- random (DARE, arXiv:2311.03099 step "drop"): keep each entry with probability ``density``.
Optionally the kept entries are rescaled so the L1 norm of the delta is unchanged
(mergekit's ``rescale: true``).
"""

from __future__ import annotations

from typing import Optional

import torch

RESCALE_EPS = 1e-7


def rescale_l1(masked: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """``masked · |original|₁ / |masked|₁``, unless either norm is ~0."""
    before = original.abs().sum()
    after = masked.abs().sum()
    if before < RESCALE_EPS or after < RESCALE_EPS:
        return masked
    return masked * (before / after)


def magnitude(delta: torch.Tensor, density: float, rescale: bool, generator=None) -> torch.Tensor:
    if density >= 1:
        return delta
    if density <= 0 or delta.numel() == 0:
        return torch.zeros_like(delta)
    k = max(1, int(density * delta.numel()))
    scores = delta.abs().reshape(-1)
    if scores.device.type == "cpu":
        scores = scores.float()
    mask = torch.zeros(delta.numel(), dtype=delta.dtype, device=delta.device)
    mask[torch.argsort(scores, descending=True)[:k]] = 1
    masked = delta * mask.reshape_as(delta)
    return rescale_l1(masked, delta) if rescale else masked


def random(delta: torch.Tensor, density: float, rescale: bool, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    if density >= 1:
        return delta
    # torch.bernoulli has no fp16 CPU kernel: work in fp32 there (bf16 stays bf16).
    on_cpu = delta.device.type == "cpu"
    work = torch.float32 if on_cpu and delta.dtype != torch.bfloat16 else delta.dtype
    probs = torch.full_like(delta, density, dtype=work)
    mask = torch.bernoulli(probs, generator=generator)
    original = delta.to(work)
    masked = original * mask
    return (rescale_l1(masked, original) if rescale else masked).to(delta.dtype)
