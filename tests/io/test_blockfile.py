"""Direct-IO output files: every byte lands where it was written, whatever the alignment,
order or thread, with O_DIRECT and through the page cache alike."""

from __future__ import annotations

import errno
import itertools
import os
import random
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from mergesmith.io import blockfile
from mergesmith.io.blockfile import BLOCK, BlockFile


def _pieces(size: int, seed: int) -> list[tuple[int, int]]:
    """Cut [0, size) at random points (some aligned, many not) into pieces, in random order."""
    rng = random.Random(seed)
    cuts = {0, size, BLOCK, 3 * BLOCK}
    cuts |= {rng.randrange(size) for _ in range(40)}
    cuts |= {rng.randrange(max(1, size // BLOCK)) * BLOCK for _ in range(5)}
    edges = sorted(c for c in cuts if c <= size)
    pieces = list(itertools.pairwise(edges))
    rng.shuffle(pieces)
    return pieces


@pytest.mark.parametrize("direct", [True, False], ids=["o_direct", "page_cache"])
@pytest.mark.parametrize("size", [100, BLOCK, 5 * BLOCK + 17, (3 << 20) + 123])
def test_every_byte_lands_in_place(tmp_path, monkeypatch, direct, size):
    monkeypatch.setattr(blockfile, "STAGE", 2 * BLOCK)  # interiors longer than a stage: several writes
    expected = torch.randint(0, 256, (size,), dtype=torch.uint8)
    out = BlockFile(tmp_path / "f.bin", size, direct=direct)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda p: out.write(p[0], expected[p[0] : p[1]]), _pieces(size, size)))
    out.close()
    assert (tmp_path / "f.bin").stat().st_size == size
    assert (tmp_path / "f.bin").read_bytes() == expected.numpy().tobytes()


def test_page_cache_fallback_when_o_direct_is_refused(tmp_path, monkeypatch):
    real_open = os.open

    def refuse_direct(path, flags, mode=0o777):
        if flags & getattr(os, "O_DIRECT", 0):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", refuse_direct)
    data = torch.arange(3 * BLOCK + 5, dtype=torch.int64).to(torch.uint8)
    out = BlockFile(tmp_path / "f.bin", data.numel())
    assert not out.direct
    out.write(7, data[7:])
    out.write(0, data[:7])
    out.close()
    assert (tmp_path / "f.bin").read_bytes() == data.numpy().tobytes()


def test_write_outside_the_file_is_refused(tmp_path):
    out = BlockFile(tmp_path / "f.bin", 10)
    with pytest.raises(Exception, match="outside 10 bytes"):
        out.write(8, torch.zeros(4, dtype=torch.uint8))
    out.close()


def test_page_cache_fallback_when_direct_writes_are_refused(tmp_path, monkeypatch):
    """O_DIRECT opens but its writes fail with EINVAL: the file continues through the page cache."""
    import fcntl

    real_pwrite, refused = os.pwrite, []

    def pwrite(fd, data, offset):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & getattr(os, "O_DIRECT", 0):
            refused.append(offset)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, offset)

    probe = BlockFile(tmp_path / "probe", 1)
    probe.close()
    if not probe.direct:
        pytest.skip(f"{tmp_path}: this filesystem refuses O_DIRECT at open")
    monkeypatch.setattr(os, "pwrite", pwrite)
    size = 6 * BLOCK + 99
    expected = torch.randint(0, 256, (size,), dtype=torch.uint8)
    out = BlockFile(tmp_path / "f.bin", size)
    for start, stop in sorted(_pieces(size, 7)):
        out.write(start, expected[start:stop])
    out.close()
    assert refused and not out.direct
    assert (tmp_path / "f.bin").read_bytes() == expected.numpy().tobytes()


@pytest.mark.parametrize("direct", [True, False], ids=["o_direct", "page_cache"])
@pytest.mark.parametrize("offset", [0, 8, BLOCK - 8, 3 * BLOCK + 520])
def test_aligned_buffers_go_out_without_a_staging_copy(tmp_path, offset, direct):
    """Bytes placed by ``AlignedBuffer.at`` (any file offset) are written straight from it, with
    no torch staging buffer, beside ordinary tensor writes; every byte lands in place."""
    size = offset + 5 * BLOCK + 17
    expected = torch.randint(0, 256, (size,), dtype=torch.uint8)
    out = BlockFile(tmp_path / "f.bin", size, direct=direct)
    view = blockfile.AlignedBuffer(size).at(offset, size - offset)
    assert len(view) == size - offset
    view[:] = expected[offset:].numpy().tobytes()
    out.write_view(offset, view)
    assert getattr(out._local, "stage", None) is None  # no staging buffer was ever made
    out.write(0, expected[:offset])
    out.close()
    assert (tmp_path / "f.bin").read_bytes() == expected.numpy().tobytes()


def test_write_view_outside_the_file_is_refused(tmp_path):
    out = BlockFile(tmp_path / "f.bin", 10)
    with pytest.raises(Exception, match="outside 10 bytes"):
        out.write_view(8, blockfile.AlignedBuffer(4).at(8, 4))
    out.close()
