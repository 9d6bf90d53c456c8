"""Stream the plan: for each job read its inputs, run the method, cast, write. One job in memory."""

from __future__ import annotations

import hashlib
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Callable, Mapping, Optional

import torch

from mergesmith.io.resolve import ModelInput
from mergesmith.io.writer import ShardedWriter, TensorSlot
from mergesmith.methods.registry import METHODS
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


def run_job(job: TensorJob, models: Mapping[str, ModelInput], seed: int) -> torch.Tensor:
    dtype = torch_dtype(job.dtype)
    tensors = [models[s.model].reader.get(s.name).to(dtype) for s in job.sources]
    spec = METHODS[job.method]
    generator = generator_for(seed, job.output) if spec.random else None
    result = spec.fn(tensors, job.base_index, job.params, generator)
    return result.to(torch_dtype(job.out_dtype))


# Bytes of input and output tensors that may be in flight at once. One job larger than this
# still runs (alone): memory stays bounded by the largest tensor, never by the model.
DEFAULT_BUDGET = 512 * 2**20


def job_bytes(job: TensorJob) -> int:
    """Bytes a job holds at once: its inputs and its output, in the compute dtype."""
    count = 1
    for dim in job.shape:
        count *= dim
    return count * torch_dtype(job.dtype).itemsize * (len(job.sources) + 1)


def execute(
    plan: Plan, models: Mapping[str, ModelInput], writer: ShardedWriter,
    progress: Optional[Progress] = None, workers: int = 2, budget: int = DEFAULT_BUDGET,
) -> None:
    """Run every job; up to ``workers`` jobs and ``budget`` bytes are in flight at once.

    Each job reads, computes and writes on its own (torch kernels, the C kernels and
    pread/pwrite release the GIL), so IO of one job overlaps arithmetic of another. Results do
    not depend on ``workers``: each job is independent and random methods are seeded per tensor.
    """
    if workers <= 1:
        for job in plan.jobs:
            _write_job(job, models, writer, plan.seed, progress)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mergesmith") as pool:
        in_flight: dict = {}   # future -> bytes
        try:
            for job in plan.jobs:
                cost = job_bytes(job)
                while in_flight and (len(in_flight) >= workers or sum(in_flight.values()) + cost > budget):
                    done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                    for future in done:
                        del in_flight[future]
                        future.result()
                in_flight[pool.submit(_write_job, job, models, writer, plan.seed, progress)] = cost
            for future in list(in_flight):
                future.result()
        except BaseException:
            for future in in_flight:
                future.cancel()
            raise


def _write_job(job: TensorJob, models, writer: ShardedWriter, seed: int, progress: Optional[Progress]) -> None:
    writer.write(job.output, run_job(job, models, seed))
    if progress is not None:
        progress(1)
