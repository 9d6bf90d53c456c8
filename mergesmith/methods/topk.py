"""Exact top-k by magnitude in linear time (TIES "trim"), with a deterministic tie rule.

The k-th largest ``|x|`` is found from histograms of the IEEE bit patterns of ``|x|``
(for non-negative floats the patterns order like the values): one 16-bit digit per pass,
most significant first, each pass narrowing the candidates to one bucket. Entries above the
threshold are kept; among entries equal to it, the lowest indices are kept until ``k``.

mergekit selects with ``argsort(|x|, descending=True)[:k]``, an unstable sort: which of the
entries tied at the threshold survive depends on the sort's internals (and differs between its
CPU and GPU paths). In bf16 such ties are common (about a tenth of a weight matrix at density
0.5), so ``tie_break: mergekit`` reproduces that sort when bit-exact agreement matters.
"""

from __future__ import annotations

from mergesmith._torch import torch

# Integer views of the float bits, by dtype name (names: importing needs no torch).
_KEY_VIEW = {"float16": "int16", "bfloat16": "int16", "float32": "int32", "float64": "int64"}
DIGIT = 16


def _keys(magnitude: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Non-negative integer keys ordered like ``magnitude`` (>= 0), and their bit width."""
    flat = magnitude.reshape(-1)
    if magnitude.dtype in (torch.float16, torch.bfloat16):
        # Widening through float32 is exact and vectorised; the bf16/fp16 bits are recovered
        # from float32's (bf16: top half; fp16: keep float32 bits, 32-bit keys order the same).
        if magnitude.dtype == torch.bfloat16:
            return flat.float().view(torch.int32) >> 16, 16
        return flat.float().view(torch.int32), 32
    view = getattr(torch, _KEY_VIEW[str(magnitude.dtype).removeprefix("torch.")])
    return flat.view(view), torch.finfo(magnitude.dtype).bits


def kth_largest_key(keys: torch.Tensor, bits: int, k: int) -> tuple[int, int]:
    """The key of the k-th largest entry, and how many entries have a strictly larger key."""
    prefix, above, candidates = 0, 0, keys
    for shift in range(bits - DIGIT, -1, -DIGIT):
        digits = (candidates >> shift) & ((1 << DIGIT) - 1)
        counts = torch.bincount(digits, minlength=1 << DIGIT)
        at_least = counts.flip(0).cumsum(0).flip(0)  # at_least[d]: entries with digit >= d
        digit = int(torch.nonzero(at_least + above >= k).max())
        above += int(at_least[digit + 1]) if digit + 1 < (1 << DIGIT) else 0
        prefix |= digit << shift
        if shift:
            candidates = candidates[digits == digit]
    return prefix, above


def top_k_mask(values: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the ``k`` entries of largest magnitude (ties: lowest index first)."""
    n = values.numel()
    if k >= n:
        return torch.ones_like(values, dtype=torch.bool)
    if k <= 0:
        return torch.zeros_like(values, dtype=torch.bool)
    keys, bits = _keys(values.abs())
    threshold, above = kth_largest_key(keys, bits, k)
    mask = keys > threshold
    need = k - above
    ties = torch.nonzero(keys == threshold).reshape(-1)
    mask[ties[:need]] = True
    return mask.reshape(values.shape)


def top_k_mask_like_mergekit(values: torch.Tensor, k: int) -> torch.Tensor:
    """mergekit 0.1.5's selection on CPU: an unstable descending argsort of |x| in float32."""
    scores = values.abs().reshape(-1)
    if scores.device.type == "cpu":
        scores = scores.float()
    mask = torch.zeros(values.numel(), dtype=torch.bool, device=values.device)
    mask[torch.argsort(scores, descending=True)[:k]] = True
    return mask.reshape(values.shape)
