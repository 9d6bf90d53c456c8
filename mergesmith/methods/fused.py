"""The fused CPU path of generalized task arithmetic (task_arithmetic, ties and their
magnitude-sparsified kin): one C pass per threshold digit and one for the output, instead of a
dozen full-size torch temporaries. Same numbers as the torch path (tests/methods/test_native.py);
it declines (returns False / None) whenever it cannot promise that, and the torch path runs instead.

It is a stream (see methods/spec.py): every pass reads the inputs range by range, so a tensor
of any size merges in the memory of a few chunks.
"""

from __future__ import annotations

from mergesmith import native
from mergesmith._torch import torch
from mergesmith.methods.spec import MethodParams

# A threshold key no magnitude reaches: density 0 keeps nothing.
KEEP_NONE = (1 << 62, -1)
KEEP_ALL = (-1, -1)
MAX_MODELS = 64


def _threshold(read, i: int, base_index: int, n: int, dtype, own) -> tuple[int, int] | None:
    density = own["density"]
    if density >= 1:
        return KEEP_ALL
    if own.get("tie_break", "index") != "index":
        return None
    if density <= 0 or n == 0:
        return KEEP_NONE
    return native.magnitude_threshold_ranges(
        lambda start, stop: read(i, start, stop), lambda start, stop: read(base_index, start, stop),
        n, dtype, max(1, int(density * n)),
    )


def _shifted(threshold: tuple[int, int], start: int) -> tuple[int, int]:
    """A threshold for the range beginning at ``start``: the tie cutoff is an index."""
    key, cutoff = threshold
    return (key, cutoff - start) if cutoff >= 0 else threshold


def fused_stream(
    read, n: int, dtype: torch.dtype, base_index: int, params: MethodParams, emit, *,
    magnitude: bool, consensus: str | None,
) -> bool:
    others = [i for i in range(len(params.per_input)) if i != base_index]
    if not others or len(others) > MAX_MODELS or consensus not in (None, "sum"):
        return False
    if native.code(dtype) is None or not native.available(*(read(i, 0, min(n, 1)) for i in range(len(params.per_input)))):
        return False
    if magnitude and params.shared["rescale"]:
        return False  # L1 rescaling needs torch's reduction order; the torch path handles it
    thresholds = []
    for i in others:
        found = _threshold(read, i, base_index, n, dtype, params.per_input[i]) if magnitude else KEEP_ALL
        if found is None:
            return False
        thresholds.append(found)
    weights = torch.tensor(params.each("weight", others), dtype=dtype)
    total = float(weights.sum())
    out = torch.empty(min(n, native.CHUNK), dtype=dtype)   # reused: emit copies each chunk
    for start in range(0, n, native.CHUNK):
        stop = min(n, start + native.CHUNK)
        emit(start, native.gta(
            read(base_index, start, stop), [read(i, start, stop) for i in others],
            [_shifted(t, start) for t in thresholds], weights, consensus == "sum", params.shared["normalize"],
            params.shared["lambda"], 1.0 if abs(total) < 1e-8 else total, out,
        ))
    return True
