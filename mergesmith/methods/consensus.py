"""TIES sign election (arXiv:2306.01708, step "elect sign").

The elected sign of each entry is the sign of the sum of the weighted deltas (``sum``)
or the majority of their signs (``count``); ties go to +. The mask keeps, per model,
the entries whose sign agrees with the elected one.
"""

from __future__ import annotations

from mergesmith._torch import torch


def sign_agreement(deltas: torch.Tensor, method: str = "sum") -> torch.Tensor:
    """Boolean mask of shape ``deltas.shape`` (models stacked on dim 0)."""
    signs = deltas.sign()
    votes = deltas.sum(dim=0) if method == "sum" else signs.sum(dim=0)
    elected = (votes >= 0).to(signs.dtype) * 2 - 1
    return signs == elected
