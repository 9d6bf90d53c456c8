"""Streamed jobs: a large tensor merged range by range, straight from the input files' pages
into its place in the output file, so memory is a few chunks however large the tensor is.

A job streams when its method can (``MethodSpec.stream`` or ``elementwise``), it is not random
(a generator's draws depend on the shape drawn), and no input is re-indexed to another
vocabulary. Large tensors are read range by range from files whose readers can; smaller ones are
mapped whole, and their output still goes range by range into the file. Results are
bit-identical to the whole-tensor path.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

import torch

from mergesmith.execute.finite import require_finite
from mergesmith.io.header import ModelInput
from mergesmith.io.writer import ShardedWriter
from mergesmith.methods.registry import METHODS
from mergesmith.plan.jobs import TensorJob

CHUNK = 1 << 20          # elements per range (slerp's statistics are defined per 2^20 elements)
# Smaller tensors are cheaper whole: their pages are mapped once, while a streamed method reads
# its inputs once per pass (slerp: three). Whole jobs of this size keep the resident set at a
# few hundred MB with two workers, whatever the model's size.
STREAM_MIN = 16 * CHUNK


def numel(shape) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


class ChunkBuffers:
    """Read buffers of each worker thread, one per input position, reused from job to job: a
    fresh buffer per read would cost its page faults every time (~0.3 s per GB here)."""

    def __init__(self):
        self._local = threading.local()

    def get(self, slot: int, nbytes: int) -> torch.Tensor:
        buffers = self._local.__dict__.setdefault("buffers", {})
        if slot not in buffers or buffers[slot].numel() < nbytes:
            buffers[slot] = torch.empty(nbytes, dtype=torch.uint8)
        return buffers[slot]


def streamable(job: TensorJob) -> bool:
    """The method merges range by range (``stream`` or ``elementwise``), draws nothing at random
    (a generator's draws depend on the shape drawn) and no input is re-indexed to another vocabulary."""
    spec = METHODS[job.method]
    return not spec.random and (spec.stream is not None or spec.elementwise) and all(s.rows is None for s in job.sources)


def streams(job: TensorJob, models: Mapping[str, ModelInput]) -> bool:
    """Read range by range from the files: large tensors whose inputs' readers can."""
    return (
        numel(job.shape) >= STREAM_MIN and streamable(job)
        and all(hasattr(models[s.model].reader, "read_range") for s in job.sources)
        and all(numel(models[s.model].tensors[s.name].shape) == numel(job.shape) for s in job.sources)
    )


def stream_job(
    job: TensorJob, models: Mapping[str, ModelInput], writer: ShardedWriter, buffers: ChunkBuffers, device: str = "cpu",
    whole: list[torch.Tensor] | None = None,
) -> bool:
    """Merge ``job`` range by range into ``writer``; False (nothing written) if the method declines.

    ``whole``: the inputs already in memory (smaller tensors, mapped), in the compute dtype;
    without it each range is read from the files into ``buffers``. Either way the output goes
    straight to its place in the file, never into a whole-tensor buffer.
    """
    spec = METHODS[job.method]
    dtype, out_dtype = getattr(torch, job.dtype), getattr(torch, job.out_dtype)
    readers = [(models[s.model].reader, s.name) for s in job.sources]
    n = numel(job.shape)
    flats = None if whole is None else [t.reshape(-1).to(device) for t in whole]

    def read(i: int, start: int, stop: int) -> torch.Tensor:
        """Input i's elements [start, stop); valid until the next read of input i."""
        if flats is not None:
            return flats[i][start:stop]
        reader, name = readers[i]
        itemsize = models[job.sources[i].model].tensors[name].itemsize
        chunk = reader.read_range(name, start, stop, buffers.get(i, (stop - start) * itemsize))
        return chunk.to(device=device, dtype=dtype)

    def emit(start: int, chunk: torch.Tensor) -> None:
        chunk = chunk.to(out_dtype)
        require_finite(job, models, chunk)
        writer.write_range(job.output, start, chunk)

    if spec.stream is not None:
        if not spec.stream(read, n, dtype, job.base_index, job.params, emit):
            return False
    else:
        for start in range(0, n, CHUNK):
            stop = min(n, start + CHUNK)
            emit(start, spec.fn([read(i, start, stop) for i in range(len(readers))], job.base_index, job.params, None))
    writer.complete(job.output)
    return True
