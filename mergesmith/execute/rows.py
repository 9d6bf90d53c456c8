"""Re-index vocabulary tensors to the output vocabulary, as the plan's row maps say.

The arithmetic follows mergekit's PermutedVocabulary so that results agree bit for bit: a mean
is ``0 + row_1 + ... + row_n`` then ``/ n`` in the compute dtype, a single donor's row is copied
as is, and padding rows are ``torch.mean`` over the input's own token rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mergesmith.plan.jobs import RowMap, TensorSource


def _fill_rows(rows: RowMap, fill, out: torch.Tensor, inputs: Sequence[torch.Tensor]) -> None:
    index = torch.tensor(fill.rows, dtype=torch.long)
    if fill.rule == "pad":
        out[index] = torch.mean(out[: rows.token_rows], dim=0)
        return
    if not fill.donors:
        return  # zeros: the rows are still as new_zeros made them
    picked = [
        inputs[d].movedim(rows.axis, 0)[torch.tensor(r, dtype=torch.long)] for d, r in zip(fill.donors, fill.donor_rows)
    ]
    if len(picked) == 1:
        out[index] = picked[0]
        return
    total = torch.zeros_like(picked[0])
    for part in picked:
        total = total + part
    total /= len(picked)
    out[index] = total


def gather(rows: RowMap, own: torch.Tensor, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """``own`` (one input) with its vocabulary axis laid out as the output vocabulary."""
    source = own.movedim(rows.axis, 0)
    out = source.new_zeros((rows.size, *source.shape[1:]))
    for out_row, in_row, count in rows.copied:
        out[out_row : out_row + count] = source[in_row : in_row + count]
    for fill in rows.fills:
        _fill_rows(rows, fill, out, inputs)
    return out.movedim(0, rows.axis)


def reindex_inputs(sources: Sequence[TensorSource], inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Every input re-indexed; fills read the other inputs as they were read from disk."""
    return [t if s.rows is None else gather(s.rows, t, inputs) for s, t in zip(sources, inputs)]
