"""The fused CPU path of generalized task arithmetic (task_arithmetic, ties and their
magnitude-sparsified kin): one C pass per threshold digit and one for the output, instead of a
dozen full-size torch temporaries. Same numbers as the torch path (tests/methods/test_native.py);
it declines (returns None) whenever it cannot promise that, and the torch path runs instead.
"""

from __future__ import annotations

from typing import Optional

import torch

from mergesmith import native
from mergesmith.methods.spec import MethodParams

# A threshold key no magnitude reaches: density 0 keeps nothing.
KEEP_NONE = (1 << 62, -1)
KEEP_ALL = (-1, -1)
MAX_MODELS = 64


def _threshold(x: torch.Tensor, base: torch.Tensor, own) -> Optional[tuple[int, int]]:
    density = own["density"]
    if density >= 1:
        return KEEP_ALL
    if own.get("tie_break", "index") != "index":
        return None
    if density <= 0 or base.numel() == 0:
        return KEEP_NONE
    return native.magnitude_threshold(x, base, max(1, int(density * base.numel())))


def fused_task_arithmetic(
    tensors, base_index: int, params: MethodParams, *, magnitude: bool, consensus: Optional[str],
) -> Optional[torch.Tensor]:
    """The merged tensor, or None when the fused kernel does not apply."""
    base = tensors[base_index]
    others = [i for i in range(len(tensors)) if i != base_index]
    xs = [tensors[i] for i in others]
    if not xs or len(xs) > MAX_MODELS or consensus not in (None, "sum") or not native.available(base, *xs):
        return None
    if magnitude and params.shared["rescale"]:
        return None  # L1 rescaling needs torch's reduction order; the torch path handles it
    thresholds = []
    for i, x in zip(others, xs):
        found = _threshold(x, base, params.per_input[i]) if magnitude else KEEP_ALL
        if found is None:
            return None
        thresholds.append(found)
    weights = torch.tensor(params.each("weight", others), dtype=base.dtype)
    total = float(weights.sum())
    return native.gta(
        base, xs, thresholds, weights, consensus == "sum", params.shared["normalize"],
        params.shared["lambda"], 1.0 if abs(total) < 1e-8 else total,
    )
