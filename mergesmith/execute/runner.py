"""Run the plan: for each job run its method's steps over its inputs (execute/method.py), cast
each output range, check it and write it. A few jobs in flight, each holding ranges or one tensor."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from functools import partial

import torch

from mergesmith.execute.device import check_device  # noqa: F401  (the merge's entry point imports it from here)
from mergesmith.execute.finite import require_finite
from mergesmith.execute.method import MemorySource, run_method
from mergesmith.execute.rows import reindex_inputs
from mergesmith.execute.stream import ChunkBuffers, FileSource, numel, streams
from mergesmith.io.header import ModelInput
from mergesmith.io.writer import ShardedWriter, TensorSlot
from mergesmith.methods import steps
from mergesmith.methods.registry import METHODS
from mergesmith.methods.steps import Context
from mergesmith.plan.jobs import Plan, TensorJob

Progress = Callable[[int], None]


def torch_dtype(name: str) -> torch.dtype:
    return getattr(torch, name)


def slots(plan: Plan) -> list[TensorSlot]:
    return [TensorSlot(job.output, job.shape, torch_dtype(job.out_dtype)) for job in plan.jobs]


def generator_for(seed: int, tensor_name: str) -> torch.Generator:
    """Randomness keyed by (seed, tensor): results do not depend on job order or workers."""
    digest = hashlib.sha256(f"{seed}:{tensor_name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def read_sources(job: TensorJob, models: Mapping[str, ModelInput]) -> list[torch.Tensor]:
    """The job's inputs in its compute dtype; vocabulary tensors re-indexed to the output vocabulary."""
    dtype = torch_dtype(job.dtype)
    tensors = [models[s.model].reader.get(s.name).to(dtype) for s in job.sources]
    if any(s.rows is not None for s in job.sources):
        tensors = reindex_inputs(job.sources, tensors)
    return tensors


def context(job: TensorJob, seed: int) -> Context:
    """What the method's steps see for this job: a generator only for random methods."""
    generator = generator_for(seed, job.output) if METHODS[job.method].random else None
    return Context(job.params, job.base_index, tuple(job.shape), torch_dtype(job.dtype), generator)


# Bytes of input and output tensors that may be in flight at once. One job larger than this
# still runs (alone): memory stays bounded by the largest tensor, never by the model.
DEFAULT_BUDGET = 512 * 2**20


def job_bytes(job: TensorJob, streamed: bool = False) -> int:
    """Bytes a job holds at once: its inputs and its output (a range of each when streamed)."""
    count = steps.RANGE if streamed else numel(job.shape)
    return count * torch_dtype(job.dtype).itemsize * (len(job.sources) + 1)


def execute(
    plan: Plan,
    models: Mapping[str, ModelInput],
    writer: ShardedWriter,
    progress: Progress | None = None,
    workers: int = 2,
    budget: int = DEFAULT_BUDGET,
    device: str = "cpu",
) -> None:
    """Run every job; up to ``workers`` jobs and ``budget`` bytes are in flight at once.

    Each job reads, computes and writes on its own (torch kernels, the C kernels and
    page faults / pwrite release the GIL), so IO of one job overlaps arithmetic of another. Results do
    not depend on ``workers``: each job is independent and random methods are seeded per tensor.
    ``device`` (e.g. ``cuda``) runs the methods there: inputs move to it after reading, results
    come back before writing, and random draws stay on the CPU generator, so numbers match.
    """
    # torch keeps its own thread count: results of some torch reductions depend on it, and
    # mergekit runs with the default, so changing it would cost bit-exact agreement.
    run = partial(
        _write_job,
        models=models,
        writer=writer,
        seed=plan.seed,
        progress=progress,
        buffers=ChunkBuffers(),
        device=device,
    )
    if workers <= 1:
        for job in plan.jobs:
            run(job, streamed=streams(job, models))
    else:
        _execute_parallel(plan, models, run, workers, budget)


def _execute_parallel(plan, models, run, workers: int, budget: int) -> None:
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mergesmith") as pool:
        in_flight: dict = {}  # future -> bytes
        try:
            for job in plan.jobs:
                streamed = streams(job, models)
                cost = job_bytes(job, streamed)
                while in_flight and (len(in_flight) >= workers or sum(in_flight.values()) + cost > budget):
                    done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                    for future in done:
                        del in_flight[future]
                        future.result()
                in_flight[pool.submit(run, job, streamed=streamed)] = cost
            for future in list(in_flight):
                future.result()
        except BaseException:
            for future in in_flight:
                future.cancel()
            raise


def _write_job(
    job: TensorJob,
    *,
    models,
    writer: ShardedWriter,
    seed: int,
    progress: Progress | None,
    streamed: bool,
    buffers: ChunkBuffers,
    device: str,
) -> None:
    if streamed:
        source = FileSource(job, models, buffers, device)
    else:
        source = MemorySource([t.to(device) for t in read_sources(job, models)])
    out_dtype = torch_dtype(job.out_dtype)

    def emit(start: int, chunk: torch.Tensor) -> None:
        chunk = chunk.to(out_dtype)
        require_finite(job, models, chunk)  # every range, before it reaches the file
        writer.write_range(job.output, start, chunk)

    run_method(METHODS[job.method], context(job, seed), source, emit)
    writer.complete(job.output)
    if progress is not None:
        progress(1)
