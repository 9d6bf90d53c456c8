"""The compact view of a plan: which source layers land where, and what each parameter does across
them — what `mergesmith plan` prints by default (the per-tensor table is `--tensors`, every number
`--json`).

Layers are grouped into runs that come from consecutive layers of the same inputs (a slice). Within
a run, a parameter's values are shown per group of tensors that share them across the run's layers
(`self_attn.*`, `mlp.*`, the rest): constant as one number, a gradient as its values at up to five
evenly spaced layers. Embeddings, final norm and head follow, one line each.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from mergesmith.plan.jobs import Plan, TensorJob

WIDTH = 100
SAMPLES = 5  # values shown for a parameter that changes across a run


@dataclass(frozen=True)
class _Run:
    """Output layers [start, stop) from the same inputs, source layers advancing by one."""

    start: int
    stop: int
    sources: tuple[tuple[str, int], ...]  # (model, first source layer) per input


def _number(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _resolved(job: TensorJob) -> tuple[dict, list[dict]]:
    resolved = job.params.as_dict()
    return resolved["shared"], resolved["per_input"]


def short_names(keys: Sequence[str]) -> dict[str, str]:
    """Each model key as its last path component (both sides of ``base+adapter``), unless two
    models would then read the same: those keep their whole key."""

    def short(key: str) -> str:
        return "+".join(part.rstrip("/").rsplit("/", 1)[-1] or part for part in key.split("+"))

    shorts = {key: short(key) for key in keys}
    clashes = {v for v in shorts.values() if list(shorts.values()).count(v) > 1}
    return {key: key if value in clashes else value for key, value in shorts.items()}


def _layer_sources(plan: Plan) -> dict[int, tuple[tuple[str, int], ...]]:
    """Per output layer, each input's (model, source layer), read off the layer's first job."""
    found: dict[int, tuple[tuple[str, int], ...]] = {}
    for job in plan.jobs:
        if job.layer is None or job.layer in found:
            continue
        found[job.layer] = tuple((s.model, _source_layer(s.name)) for s in job.sources)
    return found


def _source_layer(name: str) -> int:
    parts = name.split(".")
    return next((int(p) for p in parts if p.isdigit()), -1)


def _runs(plan: Plan) -> list[_Run]:
    runs: list[_Run] = []
    for layer, sources in sorted(_layer_sources(plan).items()):
        last = runs[-1] if runs else None
        step = layer - (last.start if last else 0)
        if (
            last
            and last.stop == layer
            and all(m == lm and s == ls + step for (m, s), (lm, ls) in zip(sources, last.sources))
            and len(sources) == len(last.sources)
        ):
            runs[-1] = _Run(last.start, layer + 1, last.sources)
        else:
            runs.append(_Run(layer, layer + 1, sources))
    return runs


def _short(job: TensorJob) -> str:
    """The tensor's name inside its layer: ``self_attn.q_proj.weight``."""
    parts = job.output.split(".")
    digits = [i for i, p in enumerate(parts) if p.isdigit()]
    return ".".join(parts[digits[0] + 1 :]) if digits else job.output


def _label(names: Sequence[str]) -> str:
    heads = {n.split(".")[0] for n in names}
    if len(heads) == 1 and len(names) > 1:
        return f"{heads.pop()}.*"
    shown = ", ".join(sorted(names)[:3])
    return shown + (f" +{len(names) - 3}" if len(names) > 3 else "")


def _series(values: list) -> str:
    if all(v == values[0] for v in values):
        return _number(values[0])
    n = len(values)
    picks = sorted({round(i * (n - 1) / (SAMPLES - 1)) for i in range(SAMPLES)}) if n > SAMPLES else range(n)
    return " → ".join(_number(values[i]) for i in picks)


def _parameter_lines(jobs: list[TensorJob], models: Sequence[str]) -> list[str]:
    """One line per parameter (and input, for per-model ones) and group of tensors sharing a series."""
    series: dict[tuple[str, str], dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for job in sorted(jobs, key=lambda j: j.layer):
        shared, per_input = _resolved(job)
        for name, value in shared.items():
            series[(name, "")][_short(job)].append(value)
        for i, values in enumerate(per_input):
            for name, value in values.items():
                if value is not None:
                    series[(name, models[i])][_short(job)].append(value)
    lines = []
    for (name, model), by_tensor in series.items():
        groups: dict[str, list[str]] = defaultdict(list)
        for tensor, values in by_tensor.items():
            groups[_series(values)].append(tensor)
        who = f"{name}[{model}]" if model else name
        if len(groups) == 1:
            lines.append(f"    {who}: {next(iter(groups))}")
            continue
        for text, tensors in sorted(groups.items(), key=lambda g: -len(g[1])):
            lines.append(f"    {who} {_label(tensors)}: {text}")
    return lines


def _run_lines(plan: Plan, run: _Run, names: dict[str, str]) -> list[str]:
    jobs = [j for j in plan.jobs if j.layer is not None and run.start <= j.layer < run.stop]
    count = run.stop - run.start
    span = lambda first: f"{first}" if count == 1 else f"{first}–{first + count - 1}"  # noqa: E731
    out = span(run.start)
    sources = " + ".join(f"{names[m]} [{span(s)}]" for m, s in run.sources)
    methods = sorted({j.method for j in jobs})
    head = f"  layers {out} ← {sources}: {', '.join(methods)}"
    return [head, *_parameter_lines(jobs, [names[m] for m, _ in run.sources])]


def _global_lines(plan: Plan, names: dict[str, str]) -> list[str]:
    lines = []
    for job in (j for j in plan.jobs if j.layer is None):
        shared, per_input = _resolved(job)
        values = [f"{k}={_number(v)}" for k, v in shared.items()]
        values += [
            f"{k}[{names[s.model]}]={_number(v)}"
            for s, own in zip(job.sources, per_input)
            for k, v in own.items()
            if v is not None
        ]
        inputs = " + ".join(names[s.model] for s in job.sources)
        lines.append(f"  {job.output} ← {inputs}: {job.method}" + (f" ({', '.join(values)})" if values else ""))
    return lines


def _fit(line: str) -> str:
    return line if len(line) <= WIDTH else line[: WIDTH - 1] + "…"


def render_layer_map(plan: Plan, source: str = "") -> str:
    """The compact view (at most WIDTH columns a line)."""
    dtypes = sorted({j.out_dtype for j in plan.jobs})
    head = (
        f"# {source + ': ' if source else ''}{len(plan.jobs)} tensors, {plan.num_layers} layers, "
        f"written as {', '.join(dtypes)}; config from {short_names([plan.config_donor])[plan.config_donor]}, "
        f"tokenizer from {short_names([plan.tokenizer_donor])[plan.tokenizer_donor]}"
    )
    keys = list(dict.fromkeys(s.model for j in plan.jobs for s in j.sources))
    names = short_names(keys)
    lines = [head] + [f"# {names[k]} = {k}" for k in keys if names[k] != k]
    lines.append("# output layers ← input [source layers]: method; parameters across the run's layers")
    for run in _runs(plan):
        lines += _run_lines(plan, run, names)
    lines += ["# outside the layers"] + _global_lines(plan, names)
    lines += [f"# warning: {w}" for w in plan.warnings]
    lines.append("# every tensor: mergesmith plan --tensors; every value: --json")
    return "\n".join(_fit(line) for line in lines)
