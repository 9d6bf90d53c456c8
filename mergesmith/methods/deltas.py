"""Task vectors ``x_i − base`` of one tensor as an operator for the subspace merges (subspace.py):
formed exactly in the working dtype, once where the matrix is small, by row blocks where it is a
vocabulary matrix, so that no float32 copy of an embedding or lm_head is held whole.

Cost notes from this machine kind (2 cores, float32): fresh memory costs ~0.3 s per GB in page
faults, so an operator can take a previous one's memory (``into`` / ``release``); a product with
few columns is fastest with the wide operand on the right (``(mᵀ xᵀ)ᵀ``, ``(mᵀ x)ᵀ``).
"""

from __future__ import annotations

from mergesmith._torch import torch

LARGE = 1 << 25  # elements above which task vectors stay an operator on row blocks, never one matrix
# Elements per row block: 4 MiB in float32, below glibc's mmap threshold (execute/memory.py), so
# a block's buffers are reused without page faults, and each block is worth its kernel launches.
BLOCK = 1 << 20


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def block_rows(cols: int) -> int:
    return max(1, BLOCK // max(1, cols))


INTEGERS = {1: "uint8", 2: "int16", 4: "int32", 8: "int64"}  # names: importing this needs no torch


def _bits(x: torch.Tensor) -> torch.Tensor:
    """``x`` viewed as integers of its size where it can be: their comparison is twice as fast."""
    same = getattr(torch, INTEGERS[x.element_size()]) if x.element_size() in INTEGERS else None
    return x.view(same) if same is not None and x.is_contiguous() and x.is_floating_point() else x


def changed(tensors, base_index: int, others) -> list[int]:
    """The inputs whose bits differ from the base's (a zero task vector adds no direction to any
    of these merges: LoRA leaves embeddings and norms as they are), compared by row blocks up to
    the first difference."""
    base = tensors[base_index]
    rows = block_rows(base.shape[1])

    def differs(x: torch.Tensor) -> bool:
        if x.dtype != base.dtype:
            return True
        blocks = range(0, base.shape[0], rows)
        return any(not torch.equal(_bits(x[lo : lo + rows]), _bits(base[lo : lo + rows])) for lo in blocks)

    return [i for i in others if differs(tensors[i])]


class Deltas:
    """``P Σ_i (x_i − base)`` over ``members`` as an operator, ``P = I − U Uᵀ`` when ``outside``
    gives orthonormal columns ``U`` (else ``I``), each difference exact in the working dtype.
    Up to ``LARGE`` elements the matrix is formed once, at the first product (every product is
    then one kernel on it); above, products go by row blocks formed afresh in reused buffers,
    so no vocabulary-sized task vector is held whole in the working dtype."""

    def __init__(self, tensors, base_index: int, members, outside=None, into: torch.Tensor | None = None):
        """``into``: memory for the formed matrix, e.g. a previous operator's ``release()``
        (fresh pages cost ~0.3 s per GB in page faults)."""
        self.tensors, self.base_index, self.members = tensors, base_index, tuple(members)
        base = tensors[base_index]
        self.shape = tuple(base.shape)
        self.dtype, self.device = work_dtype(base.dtype), base.device
        self.outside, self.into = outside, into
        self.step = block_rows(self.shape[1])
        self._whole: torch.Tensor | None = None
        self._buffers: torch.Tensor | None = None

    def release(self) -> torch.Tensor | None:
        """The formed matrix's memory, for the next operator; this one must not be used again."""
        whole, self._whole = self._whole, None
        return whole

    def _buffer(self, rows: int, which: int = 0) -> torch.Tensor:
        if self._buffers is None:
            shape = (2, min(self.step, self.shape[0]), self.shape[1])
            self._buffers = torch.empty(shape, dtype=self.dtype, device=self.device)
        return self._buffers[which][:rows]

    def rows(self, lo: int, hi: int) -> torch.Tensor:
        """Rows ``lo:hi`` of the unprojected sum, in a buffer that the next call overwrites."""
        base = self.tensors[self.base_index][lo:hi]
        out = self._buffer(hi - lo).copy_(self.tensors[self.members[0]][lo:hi]).sub_(base)  # exact
        for i in self.members[1:]:
            out += self._buffer(hi - lo, 1).copy_(self.tensors[i][lo:hi]).sub_(base)
        return out

    def _sum(self) -> torch.Tensor:
        """The unprojected sum, whole, formed by row blocks (each block's kernels in cache)."""
        out, self.into = self.into, None
        if out is None or tuple(out.shape) != self.shape or out.dtype != self.dtype:
            out = torch.empty(self.shape, dtype=self.dtype, device=self.device)
        base = self.tensors[self.base_index]
        for lo in range(0, self.shape[0], self.step):
            rows = out[lo : lo + self.step]
            hi = lo + rows.shape[0]
            rows.copy_(self.tensors[self.members[0]][lo:hi]).sub_(base[lo:hi])
            for i in self.members[1:]:
                rows += self._buffer(hi - lo).copy_(self.tensors[i][lo:hi]).sub_(base[lo:hi])
        return out

    def _formed(self) -> torch.Tensor | None:
        """The unprojected sum, formed once, up to ``LARGE`` elements; else None."""
        if self._whole is None and self.shape[0] * self.shape[1] <= LARGE:
            self._whole = self._sum()
        return self._whole

    def dense(self) -> torch.Tensor:
        """The (projected) matrix, for the full SVD."""
        whole = self._formed()
        out = self._sum() if whole is None else whole
        if self.outside is not None:
            project_out(out, self.outside)
            if whole is not None:
                self.outside = None  # the formed matrix is projected from now on
        return out

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.outside is None else x - self.outside @ (self.outside.mT @ x)

    def mm(self, m: torch.Tensor) -> torch.Tensor:
        """``x m``, computed as ``(mᵀ xᵀ)ᵀ``: see ``tmm``."""
        mt = m.mT.contiguous()
        if self._formed() is not None:
            return self._project((mt @ self._whole.mT).mT)
        out = m.new_empty(m.shape[1], self.shape[0])
        for lo in range(0, self.shape[0], self.step):
            hi = min(lo + self.step, self.shape[0])
            out[:, lo:hi] = mt @ self.rows(lo, hi).mT
        return self._project(out.mT)

    def tmm(self, m: torch.Tensor) -> torch.Tensor:
        """``xᵀ m``, as ``(mᵀ x)ᵀ``: with few columns in ``m`` the product whose wide side is the
        right operand is the fast kernel (5632 × 2048 float32, 4 columns: 3.6 against 10–28 ms)."""
        m = self._project(m)
        if self._formed() is not None:
            return (m.mT @ self._whole).mT
        out = m.new_zeros(m.shape[1], self.shape[1])
        for lo in range(0, self.shape[0], self.step):
            hi = min(lo + self.step, self.shape[0])
            out.addmm_(m[lo:hi].mT, self.rows(lo, hi))
        return out.mT


def project_out(x: torch.Tensor, u: torch.Tensor) -> None:
    """``x ← x − u uᵀ x`` in place, in row blocks (``u`` orthonormal columns)."""
    coefficients = u.mT @ x
    rows = block_rows(x.shape[1])
    for i in range(0, x.shape[0], rows):
        x[i : i + rows] -= u[i : i + rows] @ coefficients
