"""Recipe + model headers → Plan. Pure: reads only headers and configs already in memory (and
tokenizer files, for a vocabulary); never a tensor, never a reader.

Follows mergekit's planning so recipes give the same tensors: embeddings come from the first
slice's sources and final norm / head from the last slice's, both at gradient position t=0;
layer ``i`` of an ``n``-layer slice sits at ``t = i / (n - 1)`` (t=1 for one layer).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from mergesmith._torch import torch
from mergesmith.arch.infer import ArchInput, arch_for_models
from mergesmith.arch.spec import ArchSpec, WeightSpec
from mergesmith.config.load import dtype_name
from mergesmith.config.params import resolve
from mergesmith.config.schema import OutputSlice, Recipe
from mergesmith.errors import (
    ArchitectureError,
    ConfigError,
    MissingTensorError,
    ShapeMismatchError,
)
from mergesmith.io.header import ModelHeader, headers_of
from mergesmith.methods.params import Params
from mergesmith.methods.registry import get_method
from mergesmith.methods.spec import BasePolicy, MethodSpec, OptionalTensors, Scope
from mergesmith.plan.calibration import calibrated_jobs
from mergesmith.plan.coverage import check_coverage, layer_weights, post_weights
from mergesmith.plan.jobs import LayerOrigin, Plan, TensorJob, TensorSource
from mergesmith.plan.modules import multimodal_plan
from mergesmith.plan.recipe_checks import check_filters, check_parameters
from mergesmith.plan.slices import canonical_slices, check_slices
from mergesmith.plan.vocab import VocabPlan, build_vocab, other_dims, reindex


@dataclass(frozen=True)
class _Context:
    recipe: Recipe
    method: MethodSpec
    models: Mapping[str, ModelHeader]
    source: str
    vocab: VocabPlan | None = None
    notes: list = field(default_factory=list)  # warnings, in order, each once


def _scopes(ctx: _Context, out_slice: OutputSlice, model: str | None):
    """Parameter scopes, highest precedence first: the source's own, the slice's, the recipe's."""
    if model is not None:
        for src in out_slice.sources:
            if src.model == model:
                yield src.parameters
    yield out_slice.parameters
    yield ctx.recipe.parameters


def _resolve_params(ctx, out_slice, base_index, out_name, in_names, t) -> Params:
    method = ctx.method
    shared = {}
    for p in method.params:
        if p.scope == Scope.SHARED:
            shared[p.name] = _one(ctx, p, _scopes(ctx, out_slice, None), out_name, t, None)
    per_input = []
    for i, (src, name) in enumerate(zip(out_slice.sources, in_names)):
        values = {}
        for p in method.params:
            if p.scope == Scope.INPUT or (p.scope == Scope.NON_BASE and i != base_index):
                values[p.name] = _one(ctx, p, _scopes(ctx, out_slice, src.model), name, t, src.model)
        per_input.append(values)
    return method.params_type.build(shared, per_input, base_index)


def _one(ctx, param, scopes, tensor_name, t, model):
    where = f"{ctx.source}: {tensor_name}: "
    found, value = resolve(param.name, scopes, tensor_name, t, lambda v: param.validate(v, where))
    if found:
        return value
    if param.required:
        owner = f" for model '{model}'" if model else ""
        raise ConfigError(
            f"{ctx.source}: merge method '{ctx.method.name}' needs parameter '{param.name}'{owner} "
            f"(tensor {tensor_name}); set it under that model's parameters or the top-level parameters"
        )
    return param.default


def _lookup(model: ModelHeader, weight: WeightSpec, name: str) -> str | None:
    """The tensor to read for ``name`` in this model: itself, else a tied alternative."""
    if name in model.tensors:
        return name
    return next((alt for alt in weight.tied_to if alt in model.tensors), None)


def _base_index(ctx: _Context, out_slice: OutputSlice, where: str) -> int | None:
    if ctx.method.base == BasePolicy.IGNORED:
        return None
    base = out_slice.base_model or ctx.recipe.base_model
    keys = [s.model for s in out_slice.sources]
    if base is None and ctx.method.base == BasePolicy.OPTIONAL:
        return None
    if base is None or base not in keys:
        raise ConfigError(
            f"{ctx.source}: {where}: merge method '{ctx.method.name}' needs a base_model among its sources "
            f"{keys}; set base_model to one of them"
        )
    return keys.index(base)


def _check_contract(ctx: _Context, out_slice: OutputSlice, where: str) -> None:
    keys = [s.model for s in out_slice.sources]
    n, lo, hi = len(keys), ctx.method.min_inputs, ctx.method.max_inputs
    if n < lo or (hi is not None and n > hi):
        want = f"exactly {lo}" if lo == hi else (f"at most {hi}" if hi is not None else f"at least {lo}")
        raise ConfigError(
            f"{ctx.source}: {where}: merge method '{ctx.method.name}' takes {want} models, got {n}: {keys}"
        )
    if len(set(keys)) != n:
        raise ConfigError(f"{ctx.source}: {where}: a model appears twice among the sources {keys}; list each once")
    others = n - (_base_index(ctx, out_slice, where) is not None)
    lo, hi = ctx.method.min_non_base, ctx.method.max_non_base
    if others < lo or (hi is not None and others > hi):
        want = f"exactly {lo}" if lo == hi else (f"at most {hi}" if hi is not None else f"at least {lo}")
        raise ConfigError(
            f"{ctx.source}: {where}: merge method '{ctx.method.name}' takes {want} models besides "
            f"the base, got {others}: {keys}"
        )


# Float dtypes by width; half and bfloat16 meet in float32, as torch.promote_types says.
_FLOAT_RANK = {"float16": 16, "bfloat16": 16, "float32": 32, "float64": 64}


def promote(a: str, b: str) -> str:
    """torch.promote_types on dtype names, without importing torch for the float dtypes."""
    if a == b:
        return a
    if a in _FLOAT_RANK and b in _FLOAT_RANK:
        wide = max(a, b, key=_FLOAT_RANK.get)
        return "float32" if _FLOAT_RANK[wide] == 16 else wide
    return str(torch.promote_types(getattr(torch, a), getattr(torch, b))).removeprefix("torch.")


def _dtype(ctx: _Context, infos) -> tuple[str, str]:
    compute = dtype_name(ctx.recipe.dtype)
    if compute is None:
        compute = infos[0].dtype_name
        for info in infos[1:]:
            compute = promote(compute, info.dtype_name)
    return compute, dtype_name(ctx.recipe.out_dtype) or compute


def _plan_tensor(ctx, out_slice, weight_out: WeightSpec, in_names, t, layer) -> TensorJob | None:
    models = [ctx.models[s.model] for s in out_slice.sources]
    if weight_out.optional and not any(n in m.tensors for m, n in zip(models, in_names)):
        return None
    found = [_lookup(m, weight_out, n) for m, n in zip(models, in_names)]
    present = [i for i, f in enumerate(found) if f is not None]
    where = f"output tensor {weight_out.name}"
    if len(present) < len(models):
        if weight_out.optional:
            kept = _partial_inputs(ctx, out_slice, present, where)
            if kept == []:
                return None  # too few inputs for the method (model_stock): omitted, as in mergekit
            if kept is not None:
                job = _passthrough_job(ctx, models[kept[0]], found[kept[0]], weight_out, layer)
                return _reindexed(ctx, out_slice, weight_out, job)
        missing = models[found.index(None)]
        label = f"'{missing.key}'" if str(missing.path) == missing.key else f"'{missing.key}' ({missing.path})"
        flag = weight_out.config_flag
        hint = (
            f"its config.json leaves {flag} off, unlike the output's; make it the config donor (base_model, else "
            f"the first model) to merge without these tensors"
            if flag and not missing.config.get(flag)
            else f"is it a complete {missing.config.get('model_type')} checkpoint? re-download or re-save it"
        )
        raise MissingTensorError(f"{ctx.source}: model {label} has no tensor {in_names[found.index(None)]}; {hint}")
    infos = [m.tensors[f] for m, f in zip(models, found)]
    axis = weight_out.vocab_axis if ctx.vocab is not None else None
    if len({other_dims(i.shape, axis) for i in infos}) > 1:
        raise _shape_error(ctx, models, infos, weight_out, where)
    base_index = _base_index(ctx, out_slice, where)
    params = _resolve_params(ctx, out_slice, base_index, weight_out.name, in_names, t)
    if ctx.method.check is not None:
        ctx.method.check(params, f"{ctx.source}: {where}: ")
    compute, out = _dtype(ctx, infos)
    sources = tuple(TensorSource(m.key, f) for m, f in zip(models, found))
    job = TensorJob(weight_out.name, sources, base_index, ctx.method.name, params, infos[0].shape, compute, out, layer)
    job = _reindexed(ctx, out_slice, weight_out, job)
    if ctx.method.settle is not None:
        job = replace(
            job, params=ctx.method.settle(job.params, job.shape, len(job.sources), f"{ctx.source}: {where}: ")
        )
    return job


def _reindexed(ctx: _Context, out_slice: OutputSlice, weight_out: WeightSpec, job: TensorJob) -> TensorJob:
    """The job with its vocabulary axis mapped to the output vocabulary (see plan/vocab.py)."""
    axis = weight_out.vocab_axis
    if ctx.vocab is None or axis is None:
        return job
    in_rows = [ctx.models[s.model].tensors[s.name].shape[axis] for s in job.sources]
    base = out_slice.base_model or ctx.recipe.base_model
    sources, notes = reindex(ctx.vocab, job.sources, in_rows, axis, base, f"{ctx.source}: output tensor {job.output}")
    ctx.notes.extend(n for n in notes if n not in ctx.notes)
    shape = job.shape[:axis] + (ctx.vocab.output.rows,) + job.shape[axis + 1 :]
    return replace(job, sources=sources, shape=shape)


SIZE_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim")


def _shape_error(ctx, models, infos, weight_out: WeightSpec, where: str) -> ShapeMismatchError:
    shapes = ", ".join(f"'{m.key}': {list(i.shape)}" for m, i in zip(models, infos))
    differing = [k for k in SIZE_KEYS if len({str(m.config.get(k)) for m in models}) > 1]
    if differing:
        values = ", ".join(f"{k}: " + " vs ".join(str(m.config.get(k)) for m in models) for k in differing)
        hint = f"their config.json differ in {values}"
    else:
        hint = "one checkpoint does not match its config.json"
    fix = "only models of the same size can be merged"
    if weight_out.vocab_axis is not None:
        fix += " (for different vocabularies set tokenizer_source)"
    return ShapeMismatchError(f"{ctx.source}: {where} has inputs of different shapes {{{shapes}}}; {hint}; {fix}")


def _partial_inputs(ctx, out_slice, present: list[int], where: str):
    """For an optional tensor only ``present`` inputs have: ``[i]`` to copy input i, ``[]`` to omit
    the tensor, None for a missing-tensor error (mergekit's optional tensor policies)."""
    policy = ctx.method.optional_tensors
    base = _base_index(ctx, out_slice, where)
    if len(present) == 1 and (
        policy == OptionalTensors.SINGLETON or (policy == OptionalTensors.BASE_SINGLETON and present[0] == base)
    ):
        return present
    if policy == OptionalTensors.BASE_OR_SKIP and len(present) < ctx.method.min_inputs:
        return present if present == [base] else []
    return None


def _passthrough_job(ctx, model: ModelHeader, name: str, weight_out: WeightSpec, layer) -> TensorJob:
    info = model.tensors[name]
    compute, out = _dtype(ctx, [info])
    params = get_method("passthrough").params_type.build({}, [{"scale": None}], None)
    return TensorJob(
        weight_out.name, (TensorSource(model.key, name),), None, "passthrough", params, info.shape, compute, out, layer
    )


def _check_arch(models: Mapping[str, ModelHeader], trust_remote_code: bool = False) -> ArchSpec:
    # No data file for the model's class: a definition inferred from its tensor names, with a warning.
    specs = arch_for_models(
        {
            key: ArchInput(dict(m.config), {n: i.shape for n, i in m.tensors.items()}, f"model '{key}' ({m.path})")
            for key, m in models.items()
        },
        trust_remote_code=trust_remote_code,
    )
    families = {s.family for s in specs.values()}
    if len(families) > 1:
        listing = ", ".join(f"'{k}': {s.family}" for k, s in specs.items())
        raise ArchitectureError(f"models of different architectures cannot be merged: {listing}")
    return next(iter(specs.values()))


def _plan_layers(ctx, arch, slices, jobs: list) -> list[LayerOrigin]:
    origins: list[LayerOrigin] = []
    for out_slice in slices:
        start0, end0 = out_slice.sources[0].layer_range
        count = end0 - start0
        for offset in range(count):
            t = offset / (count - 1) if count > 1 else 1
            out_index = len(origins)
            for k, template in enumerate(arch.layer):
                in_names = [arch.layer_weights(s.layer_range[0] + offset)[k].name for s in out_slice.sources]
                job = _plan_tensor(ctx, out_slice, template.at_layer(out_index), in_names, t, out_index)
                if job is not None:
                    jobs.append(job)
            origins.append(LayerOrigin(out_slice.sources[0].model, start0 + offset))
    return origins


def _donors(recipe: Recipe, source: str) -> tuple[str, str]:
    config_donor = recipe.base_model or recipe.referenced_models()[0]
    choice = recipe.tokenizer_choice
    if choice in (None, "union"):  # a union starts from the base's tokenizer files
        return config_donor, config_donor
    if choice == "base":
        if recipe.base_model is None:
            raise ConfigError(f"{source}: tokenizer_source 'base' needs a base_model; set base_model or name a model")
        return config_donor, recipe.base_model
    return config_donor, choice


def build_plan(
    recipe: Recipe,
    models: Mapping[str, ModelHeader],
    *,
    source: str = "<recipe>",
    seed: int = 0,
    arch: ArchSpec | None = None,
    trust_remote_code: bool = False,
) -> Plan:
    """The plan; ``arch`` overrides the inputs' definition (a VLM's vision tower, plan/modules.py);
    ``trust_remote_code`` lets inputs whose class needs remote code be merged from their tensor names."""
    # Opened inputs (ModelInput) are accepted and reduced to their headers: planning cannot read a tensor.
    models = headers_of(models)
    # VLM inputs or ``modules:``: each module planned as a text merge or a tower (plan/modules.py).
    multimodal = multimodal_plan(recipe, models, source, seed, build_plan)
    if multimodal is not None:
        return multimodal
    ctx = _Context(recipe, get_method(recipe.merge_method, f"{source}: merge_method"), models, source)
    check_parameters(recipe, ctx.method, source)
    arch = arch or _check_arch(models, trust_remote_code)
    check_coverage(arch, models, source)
    ctx = replace(ctx, vocab=build_vocab(recipe, models, arch, source))
    ctx.notes.extend(ctx.vocab.warnings if ctx.vocab is not None else ())
    slices = canonical_slices(recipe, arch, models)
    check_slices(slices, arch, models, source)
    for i, out_slice in enumerate(slices):
        _check_contract(ctx, out_slice, f"slices[{i}]")
        _base_index(ctx, out_slice, f"slices[{i}]")
    config_donor, tokenizer_donor = _donors(recipe, source)
    jobs: list[TensorJob] = []
    for weight in arch.pre:
        names = [weight.name] * len(slices[0].sources)
        jobs += [j for j in [_plan_tensor(ctx, slices[0], weight, names, 0, None)] if j]
    layer, notes = layer_weights(arch, models, models[config_donor])
    ctx.notes.extend(notes)
    origins = _plan_layers(ctx, replace(arch, layer=layer), slices, jobs)
    post, notes = post_weights(arch, [models[s.model] for s in slices[-1].sources], models[config_donor])
    ctx.notes.extend(notes)
    for weight in post:
        names = [weight.name] * len(slices[-1].sources)
        jobs += [j for j in [_plan_tensor(ctx, slices[-1], weight, names, 0, None)] if j]
    check_filters(recipe, [j.output for j in jobs] + [s.name for j in jobs for s in j.sources], source)
    jobs, calibration = calibrated_jobs(recipe, ctx.method, arch, models, slices, jobs, source)
    out_dtype = dtype_name(recipe.out_dtype or recipe.dtype)
    for note in ctx.notes:
        warnings.warn(f"{source}: {note}", stacklevel=2)
    vocab = ctx.vocab.output if ctx.vocab is not None else None
    return Plan(
        tuple(jobs),
        arch,
        config_donor,
        tokenizer_donor,
        tuple(origins),
        out_dtype,
        seed,
        tuple(ctx.notes),
        vocab,
        calibration,
    )
