"""A VLM's language model merged with text-only models of the same base; the towers pass through.

The common case of a multimodal merge: a vision-language model (Qwen2-VL, Qwen2.5-VL, Gemma 3,
LLaVA) and a text-only fine-tune of its language model. Each VLM input is seen through its
language model (``arch/multimodal.py`` maps ``language_model.model.*`` to ``model.*`` and gives
``text_config`` as the config), the recipe is planned as an ordinary text merge, and the jobs
are named back: outputs and the VLMs' sources in the VLM's names, the text models' sources as
they are. The vision encoder and projector of the config donor (which must be a VLM) are copied
unchanged, and the layer count goes to ``text_config``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace

from mergesmith.arch.multimodal import Layout, VlmSpec
from mergesmith.config.load import dtype_name
from mergesmith.config.schema import Recipe
from mergesmith.errors import ConfigError
from mergesmith.io.header import ModelHeader
from mergesmith.methods.registry import get_method
from mergesmith.plan.jobs import Plan, TensorJob, TensorSource

Build = Callable[..., Plan]


def label(model: ModelHeader) -> str:
    return f"model '{model.key}'" if str(model.path) == model.key else f"model '{model.key}' ({model.path})"


def text_view(model: ModelHeader, spec: VlmSpec, layout: Layout) -> ModelHeader:
    """``model`` as its language model alone: text-model names, ``text_config`` as config.json."""
    tensors = {text: info for name, info in model.tensors.items() if (text := layout.to_text(name)) is not None}
    config = spec.text_config(model.config, label(model))
    return ModelHeader(model.key, model.path, config, tensors, gguf_file=model.gguf_file)


def _named_back(job: TensorJob, donor: Layout, layouts: Mapping[str, Layout]) -> TensorJob:
    sources = tuple(replace(s, name=layouts[s.model].to_vlm(s.name)) if s.model in layouts else s for s in job.sources)
    return replace(job, output=donor.to_vlm(job.output), sources=sources)


def tower_jobs(recipe: Recipe, donor: ModelHeader, layout: Layout) -> list[TensorJob]:
    """A passthrough job for every tensor of ``donor`` outside its language model."""
    params = get_method("passthrough").params_type.build({}, [{"scale": None}], None)
    jobs = []
    for name in sorted(n for n in donor.tensors if layout.to_text(n) is None):
        info = donor.tensors[name]
        compute = dtype_name(recipe.dtype) or info.dtype_name
        out = dtype_name(recipe.out_dtype) or compute
        jobs.append(
            TensorJob(name, (TensorSource(donor.key, name),), None, "passthrough", params, info.shape, compute, out)
        )
    return jobs


def _check_inputs(recipe: Recipe, models: Mapping[str, ModelHeader], vlms: Mapping[str, VlmSpec], source: str) -> str:
    """The config donor, which must be a VLM, with some text-only model beside it."""
    donor = recipe.base_model or recipe.referenced_models()[0]
    if donor not in vlms:
        raise ConfigError(
            f"{source}: merging the language model of the vision-language model '{next(iter(vlms))}' writes that "
            f"VLM, so it gives config.json; make it the base_model (or the first model), not the text-only '{donor}'"
        )
    return donor


def as_vlm_plan(plan: Plan, spec: VlmSpec, layouts: Mapping[str, Layout], donor: str) -> Plan:
    """A plan made on text views, named back into the VLM: outputs in the donor's layout, the
    VLMs' sources in their own, the layer count and per-layer lists under ``text_config``."""
    jobs = tuple(_named_back(job, layouts[donor], layouts) for job in plan.jobs)
    section = spec.text_config_key
    arch = replace(
        plan.arch,
        num_layers_key=f"{section}.{plan.arch.num_layers_key}",
        per_layer_keys=tuple(f"{section}.{k}" for k in plan.arch.per_layer_keys),
    )
    return replace(plan, jobs=jobs, arch=arch)


def language_model_plan(
    recipe: Recipe, models: Mapping[str, ModelHeader], vlms: Mapping[str, VlmSpec], source: str, seed: int, build: Build
) -> Plan:
    """The plan of a merge of VLMs (``vlms``) with text-only models: the language model merged,
    the config donor's towers copied."""
    donor = _check_inputs(recipe, models, vlms, source)
    layouts = {key: spec.layout(models[key].tensors, label(models[key])) for key, spec in vlms.items()}
    views = {key: text_view(m, vlms[key], layouts[key]) if key in vlms else m for key, m in models.items()}
    plan = as_vlm_plan(build(recipe, views, source=source, seed=seed), vlms[donor], layouts, donor)
    return replace(plan, jobs=plan.jobs + tuple(tower_jobs(recipe, models[donor], layouts[donor])))
