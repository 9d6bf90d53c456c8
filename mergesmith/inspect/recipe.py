"""A recipe's resolved parameters per layer and filter, and where a layer stack takes each layer.

Everything comes from the plan (``mergesmith.api.plan``: headers only, no tensor is read): each
layer job carries its resolved parameters, so gradients, filters and precedence appear exactly as
the merge will apply them. A series is one parameter for one filter (and, for per-model
parameters such as ``weight``, one model) across the output layers. A tensor belongs to the first
of the recipe's filters for that parameter that its name contains, else to ``rest`` (``all`` when
the recipe gives that parameter no filter); where a group's tensors in one layer differ, the layer
shows their mean. Only numeric parameters make series; embeddings, final norm and head (no layer)
are left out.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from mergesmith.config.schema import Conditional, Recipe
from mergesmith.plan.jobs import LayerOrigin, Plan, TensorJob

REST, ALL = "rest", "all"


@dataclass(frozen=True)
class Series:
    param: str
    filter: str  # a recipe filter, REST or ALL
    model: str | None  # the model of a per-model parameter; None for a shared one
    values: tuple[float | None, ...]  # per output layer; None where the parameter has no value


@dataclass(frozen=True)
class Schedule:
    source: str  # the recipe file, for titles
    method: str
    num_layers: int
    series: tuple[Series, ...]
    origins: tuple[LayerOrigin, ...]  # per output layer: source model and layer

    @property
    def is_stack(self) -> bool:
        """Whether layers move: a passthrough stack or any output layer taken from another index."""
        return len({o.model for o in self.origins}) > 1 or any(o.layer != i for i, o in enumerate(self.origins))

    def to_dict(self) -> dict:
        return {
            "recipe": self.source,
            "method": self.method,
            "layers": self.num_layers,
            "series": [
                {"param": s.param, "filter": s.filter, "model": s.model, "values": list(s.values)} for s in self.series
            ],
            "stack": [{"layer": i, "model": o.model, "source_layer": o.layer} for i, o in enumerate(self.origins)]
            if self.is_stack
            else None,
        }


def _scopes(recipe: Recipe):
    yield recipe.parameters
    for entry in recipe.models or ():
        yield entry.parameters
    for out_slice in recipe.slices or ():
        yield out_slice.parameters
        for source in out_slice.sources:
            yield source.parameters


def recipe_filters(recipe: Recipe) -> dict[str, list[str]]:
    """Per parameter name, the filters the recipe writes for it, in order of first appearance."""
    found: dict[str, list[str]] = defaultdict(list)
    for scope in _scopes(recipe):
        for name, setting in (scope or {}).items():
            conditions = (
                (setting,) if isinstance(setting, Conditional) else setting if isinstance(setting, tuple) else ()
            )
            for cond in conditions:
                if isinstance(cond, Conditional) and cond.filter not in (None, "*") and cond.filter not in found[name]:
                    found[name].append(cond.filter)
    return dict(found)


def param_values(params) -> tuple[dict, list[dict]]:
    """(shared, per input) values by recipe name, whichever form the params type offers."""
    if hasattr(params, "as_dict"):
        d = params.as_dict()
        return dict(d["shared"]), [dict(r) for r in d["per_input"]]
    return dict(params.shared), [dict(r) for r in params.per_input]  # the older form


def _numeric(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _group(filters: list[str], output: str) -> str:
    if not filters:
        return ALL
    return next((f for f in filters if f in output), REST)


def _collect(jobs: list[TensorJob], filters: dict[str, list[str]]) -> dict:
    """(param, filter, model) -> layer -> the values of that group's tensors there."""
    found: dict = defaultdict(lambda: defaultdict(list))
    for job in jobs:
        shared, per_input = param_values(job.params)
        for name, v in shared.items():
            if _numeric(v):
                found[(name, _group(filters.get(name, []), job.output), None)][job.layer].append(float(v))
        for source, record in zip(job.sources, per_input):
            for name, v in record.items():
                if _numeric(v):
                    found[(name, _group(filters.get(name, []), job.output), source.model)][job.layer].append(float(v))
    return found


def _order(filters: dict[str, list[str]], key) -> tuple:
    name, group, model = key
    known = filters.get(name, [])
    return name, known.index(group) if group in known else len(known), model or ""


def schedule_of(plan: Plan, recipe: Recipe, source: str = "<recipe>") -> Schedule:
    """The schedule of a plan already made from ``recipe``."""
    filters = recipe_filters(recipe)
    jobs = [j for j in plan.jobs if j.layer is not None]
    found = _collect(jobs, filters)
    series = []
    for key in sorted(found, key=lambda k: _order(filters, k)):
        by_layer = found[key]
        values = tuple(sum(by_layer[i]) / len(by_layer[i]) if by_layer.get(i) else None for i in range(plan.num_layers))
        series.append(Series(key[0], key[1], key[2], values))
    return Schedule(source, recipe.merge_method, plan.num_layers, tuple(series), plan.layer_origins)


def recipe_schedule(recipe, *, allow_pickle: bool = False) -> Schedule:
    """Plan ``recipe`` (a path, YAML text, dict or Recipe; headers only) and read its schedule."""
    from mergesmith.api import plan, read_recipe

    src = read_recipe(recipe)
    return schedule_of(plan(src, allow_pickle=allow_pickle), src.recipe, src.name)
