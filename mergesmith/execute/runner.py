"""Stream the plan: for each job read its inputs, run the method, cast, write. One job in memory."""

from __future__ import annotations

import hashlib
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


def execute(plan: Plan, models: Mapping[str, ModelInput], writer: ShardedWriter, progress: Optional[Progress] = None) -> None:
    for job in plan.jobs:
        writer.write(job.output, run_job(job, models, plan.seed))
        if progress is not None:
            progress(1)
