"""Calibrated methods in the plan: the Gram matrices of each model's linear-layer inputs become
per-tensor inputs of the jobs that use them, like any other input. Headers only, no tensor IO.

A job of a calibrated method (``MethodSpec.calibrated``: regmean) whose output is the weight of a
linear layer (a role in ``LINEAR_ROLES``) reads, after the models' weights, one Gram matrix per
non-base model: tensor ``<source tensor name>`` of input ``<model>#grams``, ``[in, in]``, which
the calibration stage (mergesmith/calibrate) writes. Its compute dtype is float64, or float32 for
a 16-bit output (the method's float32 fast path, methods/regmean.py). Every other tensor (norms,
embeddings, heads, biases) becomes a ``linear`` job over the non-base models with their
``weight``: what RegMean prescribes for parameters outside linear layers. The plan's
``calibration`` lists, per non-base model, the texts and token count the recipe gives
(``calibration``, ``calibration_tokens``: one value per
model for the whole merge, from the model's own parameters, else its slice's, else the top level).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from mergesmith.arch.spec import ArchSpec
from mergesmith.config.schema import Conditional, OutputSlice, Recipe
from mergesmith.errors import ArchitectureError, ConfigError
from mergesmith.io.header import ModelHeader
from mergesmith.methods.registry import get_method
from mergesmith.methods.spec import REQUIRED, MethodSpec, Scope
from mergesmith.plan.jobs import Calibration, TensorJob, TensorSource, statistics_key

# Weights of linear layers whose input the calibration stage records ([out, in], y = x @ Wᵀ).
LINEAR_ROLES = frozenset(
    {"attn_q", "attn_k", "attn_v", "attn_qkv", "attn_out", "mlp_gate", "mlp_up", "mlp_gate_up", "mlp_down"}
)
# Families whose linear layers are GPT-2 Conv1D modules ([in, out], y = x @ W): not calibrated.
CONV1D_FAMILIES = frozenset({"gpt2"})


def _setting(recipe: Recipe, slices: Sequence[OutputSlice], model: str, name: str, source: str):
    """The one value of a per-model parameter: the model's own, else its slice's, else the top level."""
    found = set()
    for out_slice in slices:
        for src in out_slice.sources:
            if src.model != model:
                continue
            for scope in (src.parameters, out_slice.parameters, recipe.parameters):
                if scope and name in scope:
                    found.add(scope[name])
                    break
    for entry in recipe.models or ():
        if entry.model == model and entry.parameters and name in entry.parameters:
            found.add(entry.parameters[name])
    if len(found) > 1:
        raise ConfigError(
            f"{source}: model '{model}' has several values of '{name}' ({sorted(map(str, found))}); "
            "it is one value per model for the whole merge: give one"
        )
    if not found and recipe.parameters and name in recipe.parameters:
        found.add(recipe.parameters[name])
    if not found:
        return None
    value = found.pop()
    if isinstance(value, Conditional) or (isinstance(value, tuple) and any(isinstance(v, Conditional) for v in value)):
        raise ConfigError(
            f"{source}: model '{model}': '{name}' is one value per model for the whole merge; a "
            "filter does not apply to it: give the value itself"
        )
    return value


def calibration_of(recipe: Recipe, method: MethodSpec, slices, models: Sequence[str], source: str):
    """Per non-base model, the texts and token count it calibrates on."""
    params = {p.name: p for p in method.params if p.scope == Scope.MODEL}
    found = []
    for model in models:
        texts = _setting(recipe, slices, model, "calibration", source)
        if texts is None:
            raise ConfigError(
                f"{source}: merge method '{method.name}' needs calibration text for model '{model}': set "
                "'calibration' (a text file, a list of files, or a bundled name such as kjv_train) in that "
                "model's parameters, or once in the top-level parameters for every model"
            )
        texts = texts if isinstance(texts, tuple) else (texts,)
        if not texts:
            raise ConfigError(
                f"{source}: model '{model}': 'calibration' is an empty list; give a text file, a list of "
                "files, or a bundled name such as kjv_train"
            )
        texts = tuple(params["calibration"].validate(t, f"{source}: model '{model}': ") for t in texts)
        tokens = _setting(recipe, slices, model, "calibration_tokens", source)
        param = params["calibration_tokens"]
        if isinstance(tokens, tuple):
            raise ConfigError(f"{source}: model '{model}': calibration_tokens is one number, got a list {list(tokens)}")
        tokens = param.default if tokens is None and param.default is not REQUIRED else tokens
        found.append(Calibration(model, texts, param.validate(tokens, f"{source}: model '{model}': ")))
    return tuple(found)


def _roles(arch: ArchSpec, jobs: Sequence[TensorJob]) -> dict[str, str]:
    roles = {w.name: w.role for w in arch.pre + arch.post}
    for layer in {j.layer for j in jobs if j.layer is not None}:
        roles.update({w.at_layer(layer).name: w.role for w in arch.layer})
    return roles


def _as_linear(job: TensorJob) -> TensorJob:
    """The weighted average of the non-base inputs (the base is a reference, not a merged model)."""
    keep = [i for i in range(len(job.sources)) if i != job.base_index]
    params = get_method("linear").params_type.build(
        {"normalize": True}, [{"weight": job.params.per_input[i].weight} for i in keep], None
    )
    sources = tuple(job.sources[i] for i in keep)
    return replace(job, sources=sources, base_index=None, method="linear", params=params)


def _with_grams(job: TensorJob) -> TensorJob:
    grams = tuple(
        TensorSource(statistics_key(s.model), s.name) for i, s in enumerate(job.sources) if i != job.base_index
    )
    # float32 compute runs regmean's float32 fast path: only for 16-bit outputs, whose rounding is far coarser
    dtype = "float32" if job.out_dtype in ("bfloat16", "float16") and job.dtype != "float64" else "float64"
    return replace(job, sources=job.sources + grams, dtype=dtype)


def calibrated_jobs(
    recipe: Recipe,
    method: MethodSpec,
    arch: ArchSpec,
    models: Mapping[str, ModelHeader],
    slices: Sequence[OutputSlice],
    jobs: list[TensorJob],
    source: str,
) -> tuple[list[TensorJob], tuple[Calibration, ...]]:
    """``jobs`` with Gram inputs on linear weights and the rest as ``linear``; the calibration list."""
    if not method.calibrated:
        return jobs, ()
    if arch.family in CONV1D_FAMILIES:
        raise ArchitectureError(
            f"{source}: merge method '{method.name}' has no calibration path for {arch.family}: its linear "
            "layers are Conv1D modules ([in, out]); merge it with another method"
        )
    if not LINEAR_ROLES & {w.role for w in arch.layer}:
        raise ArchitectureError(
            f"{source}: merge method '{method.name}' finds no attention or MLP linear layer to calibrate in "
            f"{arch.family} (its layers are state-space blocks); it would be a plain average: use linear"
        )
    if arch.experts_keys:
        raise ArchitectureError(
            f"{source}: merge method '{method.name}' has no calibration path for {arch.family}'s expert layers "
            "(transformers fuses the experts' weights in memory under other names than the checkpoint's); "
            "merge it with another method"
        )
    roles = _roles(arch, jobs)
    out = []
    merged: dict[str, None] = {}
    for job in jobs:
        if job.method != method.name:
            out.append(job)  # a passthrough of a tensor only one input has
        elif roles.get(job.output) in LINEAR_ROLES and len(job.shape) == 2 and job.sources[0].rows is None:
            out.append(_with_grams(job))
            merged.update((s.model, None) for i, s in enumerate(job.sources) if i != job.base_index)
        else:
            out.append(_as_linear(job))
    taken = set(models)
    clash = next((k for k in merged if statistics_key(k) in taken), None)
    if clash is not None:
        raise ConfigError(f"{source}: a model is named '{statistics_key(clash)}', the name of another's statistics")
    return out, calibration_of(recipe, method, slices, list(merged), source)
