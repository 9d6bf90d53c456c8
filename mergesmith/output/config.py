"""config.json of the merged model: the donor's, with layer count, per-layer lists and dtype fixed."""

from __future__ import annotations

import copy
from collections.abc import Mapping

from mergesmith.arch.spec import ArchSpec
from mergesmith.io.header import ModelInput
from mergesmith.plan.jobs import Plan


def _per_layer(key: str, plan: Plan, models: Mapping[str, ModelInput]):
    """The list entry of each output layer, taken from the layer it was made from.

    mergekit leaves such lists (e.g. gemma3's ``layer_types``) at the donor's length, which
    breaks loading after a passthrough changes the layer count.
    """
    values = []
    for origin in plan.layer_origins:
        source = models[origin.model].config.get(key)
        if not isinstance(source, list) or origin.layer >= len(source):
            return None
        values.append(source[origin.layer])
    return values


def output_config(plan: Plan, models: Mapping[str, ModelInput]) -> dict:
    arch: ArchSpec = plan.arch
    config = copy.deepcopy(dict(models[plan.config_donor].config))
    config[arch.num_layers_key] = plan.num_layers
    for key in arch.per_layer_keys:
        if isinstance(config.get(key), list):
            values = _per_layer(key, plan, models)
            if values is not None:
                config[key] = values
    heads = {w.name for w in arch.post if w.tied_to}
    if heads and "tie_word_embeddings" not in config:
        # The planner decided from the family's default (plan/coverage.py); say it outright, so
        # a transformers version with another default loads the output the same way.
        config["tie_word_embeddings"] = not any(job.output in heads for job in plan.jobs)
    if plan.vocab is not None:
        config["vocab_size"] = plan.vocab.rows
    if plan.out_dtype:
        config["torch_dtype"] = plan.out_dtype
        if "dtype" in config:
            config["dtype"] = plan.out_dtype
    return config
