"""Inputs read range by range from the files: a large tensor is merged straight from the input
files' pages into its place in the output file, so memory is a few ranges however large it is.

A job reads its inputs this way when every step of its method takes ranges (none needs a whole
tensor: see methods/steps.py), no input is re-indexed to another vocabulary, and the tensor is
large; smaller tensors are mapped whole (``MemorySource``), and their output still goes range by
range into the file. The steps and their ranges are the same either way, and so are the bits.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

import torch

from mergesmith.execute.method import is_ranged
from mergesmith.io.header import ModelInput
from mergesmith.methods.registry import METHODS
from mergesmith.plan.jobs import TensorJob

# Smaller tensors are cheaper whole: their pages are mapped once, while a method with passes
# reads its inputs once per sweep (slerp: three). Whole jobs of this size keep the resident set
# at a few hundred MB with two workers, whatever the model's size.
STREAM_MIN = 16 << 20  # elements


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


def streams(job: TensorJob, models: Mapping[str, ModelInput]) -> bool:
    """Read range by range from the files: large tensors of ranged methods whose inputs' readers can."""
    return (
        numel(job.shape) >= STREAM_MIN
        and all(s.rows is None for s in job.sources)
        and is_ranged(METHODS[job.method], job.params)
        and all(hasattr(models[s.model].reader, "read_range") for s in job.sources)
        and all(numel(models[s.model].tensors[s.name].shape) == numel(job.shape) for s in job.sources)
    )


class FileSource:
    """The job's inputs, each range read from its file into the worker's buffer for that input."""

    def __init__(self, job: TensorJob, models: Mapping[str, ModelInput], buffers: ChunkBuffers, device: str):
        self.job, self.models, self.buffers, self.device = job, models, buffers, device
        self.dtype = getattr(torch, job.dtype)

    def read(self, i: int, start: int, stop: int) -> torch.Tensor:
        source = self.job.sources[i]
        model = self.models[source.model]
        itemsize = model.tensors[source.name].itemsize
        chunk = model.reader.read_range(source.name, start, stop, self.buffers.get(i, (stop - start) * itemsize))
        return chunk.to(device=self.device, dtype=self.dtype)

    def whole(self, i: int) -> torch.Tensor:
        source = self.job.sources[i]
        return self.models[source.model].reader.get(source.name).to(self.dtype).to(self.device)
