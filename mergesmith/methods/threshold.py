"""TIES "trim" (arXiv:2306.01708) as a statistics pass: each delta's magnitude threshold, over ranges.

For ``v = x_i - base`` and ``k = max(1, ⌊density·n⌋)``, the statistic is ``(key, cutoff)``:
entries whose magnitude key (the bits of ``|v|`` in its own format, which order like ``|v|``)
is above ``key`` are kept, and of those equal to it the ones at index ``<= cutoff``, so exactly
``k`` survive, lowest indices first at the tie (the rule of topk.py's ``top_k_mask``).
Radix selection: one sweep per 16-bit digit of the key, most significant first, each counting
the digits of the entries that match the digits found so far; histograms are kept per group of
ranges, so the last sweep scans one group for the tie cutoff. Each range is counted by the C
kernels where they take the tensors, by torch otherwise; the keys are the same.
"""

from __future__ import annotations

from mergesmith import native
from mergesmith._torch import torch
from mergesmith.methods import steps
from mergesmith.methods.steps import Pass, spans

BINS = 1 << 16
DIGIT = 16
# Elements per group of ranges (at least): the tie scan reads one group, and the histograms
# (512 KiB each) stay few.
GROUP_MIN = 2 << 20
MAX_GROUPS = 64
KEEP_ALL = (-1, -1)
KEEP_NONE = (1 << 62, -1)  # a key no magnitude reaches: density 0 keeps nothing
_KEY_BITS = {"float16": 16, "bfloat16": 16, "float32": 32, "float64": 64}


def magnitude_keys(delta: torch.Tensor) -> torch.Tensor:
    """The bits of ``|delta|`` in its own format, as integers (the C kernels' keys)."""
    magnitude = delta.abs()
    if magnitude.dtype in (torch.float16, torch.bfloat16):
        return magnitude.view(torch.int16).to(torch.int32)
    return magnitude.view(torch.int32 if magnitude.dtype == torch.float32 else torch.int64)


def kept(delta: torch.Tensor, threshold: tuple[int, int], start: int) -> torch.Tensor:
    """Boolean mask of the entries of ``delta`` (elements from ``start``) the threshold keeps."""
    key, cutoff = threshold
    if threshold == KEEP_NONE:
        return torch.zeros_like(delta, dtype=torch.bool)
    keys = magnitude_keys(delta)
    index = torch.arange(start, start + delta.numel(), device=delta.device)
    return (keys > key) | ((keys == key) & (index <= cutoff))


class RadixSelect:
    """The threshold of one delta, fed its ranges: ``add`` per range, ``next_sweep`` after each
    sweep (False once found); ranges of a sweep must not straddle groups."""

    def __init__(self, n: int, dtype: torch.dtype, k: int, chunk: int):
        self.k, self.n = k, n
        self.shift = _KEY_BITS[str(dtype).removeprefix("torch.")] - DIGIT
        self.prefix, self.above = -1, 0
        self.group = -(-max(GROUP_MIN, -(-n // MAX_GROUPS)) // chunk) * chunk
        self.hist = torch.zeros((-(-n // self.group), BINS), dtype=torch.int64)
        self.scan: tuple[int, int] | None = None  # the group searched for the cutoff
        self.need = 0
        self.cutoff: int | None = None

    def add(self, start: int, x: torch.Tensor, base: torch.Tensor) -> None:
        if self.scan is None:
            self._count(start, x, base, self.hist[start // self.group])
        elif self.cutoff is None and self.scan[0] <= start < self.scan[1]:
            found, seen = _nth_equal(x, base, self.prefix, self.need)
            self.need -= seen
            if found >= 0:
                self.cutoff = start + found

    def _count(self, start: int, x: torch.Tensor, base: torch.Tensor, hist: torch.Tensor) -> None:
        if native.available(x, base):
            native.histogram(x, base, self.shift, self.prefix, hist)
            return
        keys = magnitude_keys(x - base)
        if self.prefix >= 0:
            keys = keys[(keys >> (self.shift + DIGIT)) == self.prefix]
        hist += torch.bincount(((keys >> self.shift) & (BINS - 1)).long(), minlength=BINS).cpu()

    def next_sweep(self) -> bool:
        """The digit just counted; True while another sweep is needed."""
        if self.scan is not None:
            if self.cutoff is None:
                raise AssertionError("the histogram counted more ties than the scan found")
            return False
        at_least = self.hist.sum(dim=0).flip(0).cumsum(0).flip(0)  # at_least[d]: entries with digit >= d
        digit = int(torch.nonzero(at_least + self.above >= self.k).max())
        self.above += int(at_least[digit + 1]) if digit + 1 < BINS else 0
        self.prefix = digit if self.prefix < 0 else (self.prefix << DIGIT) | digit
        if self.shift:
            self.shift -= DIGIT
            self.hist.zero_()
            return True
        self._locate_ties()
        return True

    def _locate_ties(self) -> None:
        """The group holding the ``k - above``-th tie, and how many ties come before it."""
        need = self.k - self.above
        per_group = self.hist[:, self.prefix & (BINS - 1)]
        before = torch.cumsum(per_group, 0) - per_group
        g = int(torch.nonzero(before < need).max())
        self.need = need - int(before[g])
        self.scan = (g * self.group, min(self.n, (g + 1) * self.group))

    def result(self) -> tuple[int, int]:
        return self.prefix, self.cutoff


def _nth_equal(x: torch.Tensor, base: torch.Tensor, key: int, need: int) -> tuple[int, int]:
    """The index of the ``need``-th entry of key ``key`` in this range (-1: none), and how many it holds."""
    if native.available(x, base):
        return native.nth_equal(x, base, key, need)
    equal = magnitude_keys(x - base) == key
    count = int(equal.sum())
    if count < need:
        return -1, count
    return int(torch.nonzero(equal)[need - 1]), need


class MagnitudeThreshold(Pass):
    """Every non-base delta's ``(key, cutoff)``, in the order of ``ctx.others``; density 1 keeps all."""

    name = "threshold"

    def __init__(self, ctx):
        super().__init__(ctx)
        densities = {i: ctx.params.per_input[i].density for i in ctx.others}
        self.fixed = {i: KEEP_ALL if d >= 1 else KEEP_NONE for i, d in densities.items() if not 0 < d < 1}
        self.selects = {
            i: RadixSelect(ctx.n, ctx.dtype, max(1, int(d * ctx.n)), steps.RANGE)
            for i, d in densities.items()
            if 0 < d < 1
        }

    def reads(self):
        return (self.ctx.base_index, *self.selects)

    def ranges(self):
        if not self.selects:
            return iter(())
        scans = sorted({select.scan for select in self.selects.values() if select.scan is not None})
        if not scans:
            return spans(0, self.ctx.n, steps.RANGE)
        return (span for lo, hi in scans for span in spans(lo, hi, steps.RANGE))

    def add(self, start, chunks):
        base = chunks[0]
        for select, x in zip(self.selects.values(), chunks[1:]):
            select.add(start, x, base)
        return all(s.cutoff is not None for s in self.selects.values())

    def again(self) -> bool:
        return any([select.next_sweep() for select in self.selects.values()])

    def result(self) -> tuple[tuple[int, int], ...]:
        return tuple(self.selects[i].result() if i in self.selects else self.fixed[i] for i in self.ctx.others)
