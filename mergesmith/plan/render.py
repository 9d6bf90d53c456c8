"""Show a plan: a text table for people, JSON for programs. Every resolved value is printed."""

from __future__ import annotations

import json
from typing import Any

from mergesmith.plan.jobs import Plan, TensorJob


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _params_text(job: TensorJob) -> str:
    parts = [f"{k}={_fmt(v)}" for k, v in job.params.shared.items()]
    for source, values in zip(job.sources, job.params.per_input):
        if values:
            inner = ",".join(f"{k}={_fmt(v)}" for k, v in values.items())
            parts.append(f"{source.model}[{inner}]")
    return " ".join(parts)


def _inputs_text(job: TensorJob) -> str:
    items = []
    for i, s in enumerate(job.sources):
        mark = "*" if i == job.base_index else ""
        items.append(f"{mark}{s.model}:{s.name}")
    return " ".join(items)


def render_text(plan: Plan) -> str:
    head = (
        f"# {len(plan.jobs)} tensors, {plan.num_layers} layers, architecture {plan.arch.family}, "
        f"config from {plan.config_donor}, tokenizer from {plan.tokenizer_donor}; * marks the base"
    )
    rows = [head, "output\tmethod\tdtype\tparameters\tinputs"]
    for job in plan.jobs:
        dtype = job.dtype if job.dtype == job.out_dtype else f"{job.dtype}->{job.out_dtype}"
        rows.append(f"{job.output}\t{job.method}\t{dtype}\t{_params_text(job)}\t{_inputs_text(job)}")
    return "\n".join(rows)


def plan_to_dict(plan: Plan) -> dict:
    return {
        "architecture": plan.arch.family,
        "num_layers": plan.num_layers,
        "config_from": plan.config_donor,
        "tokenizer_from": plan.tokenizer_donor,
        "tensors": [
            {
                "output": job.output, "method": job.method, "shape": list(job.shape),
                "dtype": job.dtype, "out_dtype": job.out_dtype, "layer": job.layer,
                "base_index": job.base_index,
                "inputs": [{"model": s.model, "tensor": s.name, **job.params.per_input[i]} for i, s in enumerate(job.sources)],
                "parameters": dict(job.params.shared),
            }
            for job in plan.jobs
        ],
    }


def render_json(plan: Plan) -> str:
    return json.dumps(plan_to_dict(plan), indent=1)
