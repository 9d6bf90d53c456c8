"""``mergesmith plan`` on a MoE config: what will be built, from where, with which routers."""

from __future__ import annotations

import json
from collections import Counter

from mergesmith.moe.layout import CLASS, Copy, MoePlan, Router, Zeros


def _origin(plan: MoePlan, tensor) -> str:
    source = tensor.source
    if isinstance(source, Router):
        return f"router ({'shared expert gate' if source.shared else plan.config.gate_mode})"
    if isinstance(source, Zeros):
        return "zeros"
    return source.model if source.expert is None else f"{source.model} (expert {_label(plan, source.expert)})"


def _label(plan: MoePlan, index: int) -> str:
    return str(index) if index < len(plan.config.experts) else "shared"


def _prompts(expert) -> str:
    return f"{len(expert.positive_prompts or ())} positive, {len(expert.negative_prompts or ())} negative prompts"


def render_text(plan: MoePlan, *, tensors: bool = False) -> str:
    config = plan.config
    lines = [
        f"# {plan.source}: a {CLASS[plan.family]} of {len(config.experts)} experts"
        + (" plus one shared expert" if config.shared_experts else "")
        + f", {config.experts_per_token} per token, {plan.num_layers} layers, {plan.out_dtype}",
        f"# gate_mode {config.gate_mode}; attention, norms and embeddings from {config.base_model}",
        f"# tokenizer from {plan.tokenizer_donor}",
    ]
    for i, expert in enumerate(config.all_experts()):
        lines.append(f"expert {_label(plan, i)}: {expert.source_model}: {_prompts(expert)}")
    routers = [t for t in plan.tensors if isinstance(t.source, Router)]
    shapes = Counter(t.shape for t in routers)
    lines.append("routers: " + ", ".join(f"{n} x {tuple(s)}" for s, n in shapes.items()) + " (experts, hidden)")
    origins = Counter(_origin(plan, t) for t in plan.tensors if not isinstance(t.source, Router))
    lines += [f"copied: {n} tensors from {where}" for where, n in origins.items()]
    if tensors:
        lines += [f"{t.name} {tuple(t.shape)} <- {_origin(plan, t)}" for t in plan.tensors]
    return "\n".join(lines)


def plan_to_dict(plan: MoePlan) -> dict:
    def row(t) -> dict:
        source = t.source
        entry = {"name": t.name, "shape": list(t.shape), "dtype": plan.out_dtype}
        if isinstance(source, Copy):
            entry.update(source=source.model, tensor=source.tensor, expert=source.expert)
        elif isinstance(source, Router):
            entry.update(router=plan.config.gate_mode, layer=source.layer, shared=source.shared)
        else:
            entry.update(zeros=True)
        return entry

    return {
        "moe": plan.source,
        "architecture": CLASS[plan.family],
        "gate_mode": plan.config.gate_mode,
        "experts": [
            {
                "model": e.source_model,
                "positive_prompts": len(e.positive_prompts or ()),
                "negative_prompts": len(e.negative_prompts or ()),
            }
            for e in plan.config.all_experts()
        ],
        "experts_per_token": plan.config.experts_per_token,
        "config": plan.out_config,
        "tensors": [row(t) for t in plan.tensors],
    }


def render_json(plan: MoePlan) -> str:
    return json.dumps(plan_to_dict(plan), indent=1)
