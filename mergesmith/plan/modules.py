"""mergekit's ``modules:`` form: a VLM merged module by module, each with its own inputs and parameters.

    modules:
      text_decoder:   {models: [...], parameters: {t: 0.3}}
      vision_tower:   {slices: [...]}
      multi_modal_projector: {models: [...]}

Each module is planned as a recipe of its own (the module's ``slices``/``models``; parameters
resolved source, slice, module, recipe, as mergekit does) and the jobs are concatenated into
one flat list. The language model (``text_decoder``) is planned through the text model's data
file (plan/multimodal.py); a vision tower through a definition inferred from its tensor names
with the layer count from ``module_layers``; a module without one (a projector) is a list of
tensors merged as a whole. A plain ``models:`` recipe over VLMs only means every module with
those models (mergekit's reading); ``slices:`` over VLMs only needs ``modules:``.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import replace

from mergesmith.arch.infer import infer_arch
from mergesmith.arch.multimodal import TEXT_MODULE, Layout, VlmSpec, find_vlm
from mergesmith.arch.spec import ArchSpec, WeightSpec
from mergesmith.config.schema import Conditional, OutputModule, Parameters, Recipe
from mergesmith.errors import ArchitectureError, ConfigError
from mergesmith.io.header import ModelHeader
from mergesmith.plan.jobs import Plan, TensorJob
from mergesmith.plan.multimodal import Build, as_vlm_plan, label, language_model_plan, text_view


def _is_conditional(setting) -> bool:
    return isinstance(setting, Conditional) or (
        isinstance(setting, tuple) and bool(setting) and isinstance(setting[0], Conditional)
    )


def _conditionals(setting) -> tuple[Conditional, ...]:
    if isinstance(setting, Conditional):
        return (setting,)
    return setting if _is_conditional(setting) else (Conditional(value=setting),)


def combined(module: Parameters | None, recipe: Parameters | None) -> Parameters | None:
    """One scope equal to the module's parameters over the recipe's: a name set in both becomes
    the module's conditionals, then the recipe's, so a tensor none of the module's filters match
    falls through to the recipe's value."""
    if not module or not recipe:
        return module or recipe
    out = dict(recipe)
    for name, setting in module.items():
        fall_through = name in recipe and _is_conditional(setting)
        out[name] = _conditionals(setting) + _conditionals(recipe[name]) if fall_through else setting
    return out


def _sub_recipe(recipe: Recipe, module: OutputModule, text: bool) -> Recipe:
    update = {"modules": None, "slices": module.slices, "models": module.models}
    update["parameters"] = combined(module.parameters, recipe.parameters)
    if not text:  # the tokenizer belongs to the language model
        update |= {"tokenizer_source": None, "tokenizer": None, "chat_template": None}
    return recipe.model_copy(update=update)


def _check_modules(recipe: Recipe, spec: VlmSpec, source: str) -> None:
    for name in recipe.modules:
        if name not in spec.modules:
            match = difflib.get_close_matches(name, spec.modules, n=1, cutoff=0.5)
            hint = f"did you mean '{match[0]}'?" if match else f"its modules: {', '.join(spec.modules)}"
            raise ConfigError(f"{source}: unknown key 'modules.{name}': {spec.family} has no such module; {hint}")
    missing = [m for m in spec.modules if m not in recipe.modules]
    if missing:
        raise ConfigError(
            f"{source}: modules lacks {', '.join(missing)}; a {spec.family} output needs every module "
            f"({', '.join(spec.modules)}), so list each (t: 0 keeps the base model's)"
        )


def _layer_count(config: Mapping, dotted: str, where: str) -> int:
    value = config
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArchitectureError(f"{where}: config.json has no integer {dotted}; add the layer count")
    return value


def _tower_view(model: ModelHeader, spec: VlmSpec, layout: Layout, module: str) -> ModelHeader:
    key = dict(spec.module_layers).get(module)
    count = _layer_count(model.config, key, label(model)) if key else 0
    config = {"architectures": [f"{spec.family}.{module}"], "model_type": f"{spec.family}.{module}"}
    config["num_hidden_layers"] = count
    tensors = {n: info for n, info in model.tensors.items() if layout.tower(n) == module}
    return ModelHeader(model.key, model.path, config, tensors, gguf_file=model.gguf_file)


def _tower_arch(view: ModelHeader) -> ArchSpec:
    shapes = {n: info.shape for n, info in view.tensors.items()}
    if view.config["num_hidden_layers"]:
        return infer_arch(view.config, shapes, label(view))
    pre = tuple(WeightSpec(n, "module") for n in sorted(shapes))
    family = view.config["model_type"]
    return ArchSpec(family, family, (family,), "num_hidden_layers", (), pre, (), ())


def _tower_jobs(recipe: Recipe, name: str, models, spec, layouts, source, seed, build: Build) -> list[TensorJob]:
    sub = _sub_recipe(recipe, recipe.modules[name], text=False)
    views = {k: _tower_view(models[k], spec, layouts[k], name) for k in sub.referenced_models()}
    donor = views[sub.base_model or sub.referenced_models()[0]]
    plan = build(sub, views, source=f"{source}: modules.{name}", seed=seed, arch=_tower_arch(donor))
    if plan.num_layers != donor.config["num_hidden_layers"]:
        raise ConfigError(
            f"{source}: modules.{name} makes {plan.num_layers} layers from {donor.config['num_hidden_layers']}; "
            "mergesmith stacks layers of the language model only (text_decoder)"
        )
    return [replace(job, layer=None) for job in plan.jobs]


def modules_plan(recipe: Recipe, models: Mapping[str, ModelHeader], source: str, seed: int, build: Build) -> Plan:
    """Every module of the config donor's VLM family planned from its own entry, jobs joined."""
    donor = recipe.base_model or recipe.referenced_models()[0]
    spec = find_vlm(models[donor].config)
    if spec is None:
        kind = models[donor].config.get("architectures")
        raise ConfigError(f"{source}: 'modules:' merges vision-language models; '{donor}' is {kind}; write 'models:'")
    for key, model in models.items():
        if find_vlm(model.config) is not spec:
            kind = model.config.get("architectures")
            raise ConfigError(f"{source}: 'modules:' merges {spec.family} models module by module; '{key}' is {kind}")
    _check_modules(recipe, spec, source)
    layouts = {key: spec.layout(m.tensors, label(m)) for key, m in models.items()}
    sub = _sub_recipe(recipe, recipe.modules[TEXT_MODULE], text=True)
    views = {k: text_view(models[k], spec, layouts[k]) for k in sub.referenced_models()}
    text = build(sub, views, source=f"{source}: modules.{TEXT_MODULE}", seed=seed)
    text = as_vlm_plan(text, spec, layouts, donor)  # output names in the config donor's layout
    jobs = list(text.jobs)
    for name in recipe.modules:
        if name != TEXT_MODULE:
            jobs += _tower_jobs(recipe, name, models, spec, layouts, source, seed, build)
    return replace(text, jobs=tuple(jobs), config_donor=donor)


def multimodal_plan(recipe: Recipe, models: Mapping[str, ModelHeader], source: str, seed: int, build: Build):
    """The plan of a recipe with VLM inputs or ``modules:``; None for a text-only merge."""
    vlms = {key: spec for key, model in models.items() if (spec := find_vlm(model.config)) is not None}
    if recipe.modules:
        return modules_plan(recipe, models, source, seed, build)
    if not vlms:
        return None
    if len(vlms) < len(models):
        return language_model_plan(recipe, models, vlms, source, seed, build)
    if recipe.slices:
        raise ConfigError(
            f"{source}: every model is a vision-language model; 'slices:' cannot say which module a layer range "
            "belongs to, so write the 'modules:' form (text_decoder, vision_tower, ...; README: Multimodal and MoE models)"
        )
    spec = next(iter(vlms.values()))
    every = {name: OutputModule(models=recipe.models) for name in spec.modules}
    return modules_plan(recipe.model_copy(update={"models": None, "modules": every}), models, source, seed, build)
