"""Show a plan: a text table for people, JSON for programs. Every resolved value is printed."""

from __future__ import annotations

import json
from typing import Any

from mergesmith.plan.jobs import Plan, RowMap, TensorJob


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _params_text(job: TensorJob) -> str:
    resolved = job.params.as_dict()
    parts = [f"{k}={_fmt(v)}" for k, v in resolved["shared"].items()]
    for source, values in zip(job.sources, resolved["per_input"]):
        if values:
            inner = ",".join(f"{k}={_fmt(v)}" for k, v in values.items())
            parts.append(f"{source.model}[{inner}]")
    return " ".join(parts)


def row_counts(rows: RowMap) -> dict[str, int]:
    """How many output rows of a re-indexed input come from where: own rows, then each fill rule."""
    counts = {"own": sum(count for _, _, count in rows.copied)}
    for fill in rows.fills:
        counts[fill.rule] = counts.get(fill.rule, 0) + len(fill.rows)
    return counts


def _inputs_text(job: TensorJob) -> str:
    items = []
    for i, s in enumerate(job.sources):
        mark = "*" if i == job.base_index else ""
        rows = ""
        if s.rows is not None:
            size = f"{s.rows.input_rows}->{s.rows.size}" if s.rows.input_rows != s.rows.size else str(s.rows.size)
            rows = "{" + f"{size} rows: " + ", ".join(f"{n} {k}" for k, n in row_counts(s.rows).items()) + "}"
        items.append(f"{mark}{s.model}:{s.name}{rows}")
    return " ".join(items)


def _vocab_text(plan: Plan) -> list[str]:
    lines = [f"# warning: {w}" for w in plan.warnings]
    v = plan.vocab
    if v is not None:
        new = ", ".join(repr(t.content) for t in v.new_tokens[:5]) + (", ..." if len(v.new_tokens) > 5 else "")
        lines.insert(
            0,
            f"# vocabulary: {v.source}, {v.token_rows} token ids, {v.rows} rows (vocab_size)"
            + (f"; {len(v.new_tokens)} tokens added to {v.donor}'s tokenizer: {new}" if v.new_tokens else "")
            + "; {rows: ...} marks re-indexed inputs",
        )
    return lines


def render_text(plan: Plan) -> str:
    head = (
        f"# {len(plan.jobs)} tensors, {plan.num_layers} layers, architecture {plan.arch.family}, "
        f"config from {plan.config_donor}, tokenizer from {plan.tokenizer_donor}; * marks the base"
    )
    rows = [head, *_vocab_text(plan), "output\tmethod\tdtype\tparameters\tinputs"]
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
        "vocabulary": None
        if plan.vocab is None
        else {
            "source": plan.vocab.source,
            "token_ids": plan.vocab.token_rows,
            "rows": plan.vocab.rows,
            "new_tokens": [{"id": t.id, "content": t.content, "special": t.special} for t in plan.vocab.new_tokens],
        },
        "warnings": list(plan.warnings),
        "tensors": [
            {
                "output": job.output,
                "method": job.method,
                "shape": list(job.shape),
                "dtype": job.dtype,
                "out_dtype": job.out_dtype,
                "layer": job.layer,
                "base_index": job.base_index,
                "inputs": [
                    {
                        "model": s.model,
                        "tensor": s.name,
                        **(job.params.as_dict()["per_input"] + [{}] * len(job.sources))[i],
                        **(
                            {"rows": {"input": s.rows.input_rows, "size": s.rows.size, **row_counts(s.rows)}}
                            if s.rows
                            else {}
                        ),
                    }
                    for i, s in enumerate(job.sources)
                ],
                "parameters": job.params.as_dict()["shared"],
            }
            for job in plan.jobs
        ],
    }


def render_json(plan: Plan) -> str:
    return json.dumps(plan_to_dict(plan), indent=1)
