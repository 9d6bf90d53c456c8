"""config.json of the merged model: the donor's, with layer count, per-layer lists and dtype fixed."""

from __future__ import annotations

import copy
import shutil
from collections.abc import Mapping
from pathlib import Path

from mergesmith.arch.spec import ArchSpec
from mergesmith.io.header import ModelInput
from mergesmith.plan.jobs import Plan


def _section(config: Mapping, dotted: str) -> tuple[Mapping, str]:
    """The mapping holding a dotted key and its last part: ``text_config.num_hidden_layers`` is
    ``num_hidden_layers`` of the ``text_config`` section (a VLM's language model, plan/multimodal.py);
    a config without that section holds it at the top."""
    *path, key = dotted.split(".")
    for part in path:
        inner = config.get(part)
        if not isinstance(inner, Mapping):
            return config, key
        config = inner
    return config, key


def _per_layer(key: str, plan: Plan, models: Mapping[str, ModelInput]):
    """The list entry of each output layer, taken from the layer it was made from.

    mergekit leaves such lists (e.g. gemma3's ``layer_types``) at the donor's length, which
    breaks loading after a passthrough changes the layer count.
    """
    values = []
    for origin in plan.layer_origins:
        holder, last = _section(models[origin.model].config, key)
        source = holder.get(last)
        if not isinstance(source, list) or origin.layer >= len(source):
            return None
        values.append(source[origin.layer])
    return values


def output_config(plan: Plan, models: Mapping[str, ModelInput]) -> dict:
    arch: ArchSpec = plan.arch
    config = copy.deepcopy(dict(models[plan.config_donor].config))
    section, layers_key = _section(config, arch.num_layers_key)
    section[layers_key] = plan.num_layers
    for key in arch.per_layer_keys:
        holder, last = _section(config, key)
        if isinstance(holder.get(last), list):
            values = _per_layer(key, plan, models)
            if values is not None:
                holder[last] = values
    heads = {w.name for w in arch.post if w.tied_to}
    if heads and "tie_word_embeddings" not in config:
        # The planner decided from the family's default (plan/coverage.py); say it outright, so
        # a transformers version with another default loads the output the same way.
        config["tie_word_embeddings"] = not any(job.output in heads for job in plan.jobs)
    if plan.vocab is not None:
        section["vocab_size"] = plan.vocab.rows
    if plan.out_dtype:
        config["torch_dtype"] = plan.out_dtype
        if "dtype" in config:
            config["dtype"] = plan.out_dtype
    return config


def copy_remote_code(donor: ModelInput, dest: Path) -> None:
    """The donor's own modules named in config.json ``auto_map``, which the output's config (the
    donor's) needs to load with trust_remote_code. ``repo--module.Class`` entries live in another
    repository and are left to transformers to fetch."""
    auto_map = donor.config.get("auto_map")
    if not isinstance(auto_map, dict) or donor.gguf_file is not None:
        return
    refs = [r for v in auto_map.values() for r in (v if isinstance(v, list) else [v]) if isinstance(r, str)]
    for ref in refs:
        if "--" not in ref and "." in ref:
            source = Path(donor.path) / f"{ref.rsplit('.', 1)[0]}.py"
            if source.is_file():
                shutil.copyfile(source, dest / source.name)
