"""The MoE model's card: Hub front matter, what was built, the experts with their prompts, the YAML.

Models are named as every mergesmith card names them (output/card_names.py): Hub ids where known,
directory names otherwise, never a path of the machine that built it.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from mergesmith.moe.layout import CLASS, MoePlan
from mergesmith.output.card import LOCAL_NOTE, MERGESMITH_MD, merge_front
from mergesmith.output.card_names import card_names, reference_md, shown_recipe

ROUTING = {
    "hidden": "the base model's hidden state at each prompt's last token, per layer",
    "hidden_last": "the base model's hidden state at each prompt's last token, per layer",
    "hidden_avg": "the base model's hidden states averaged over each prompt, per layer",
    "cheap_embed": "the sum of each prompt's token embeddings (the same for every layer)",
    "random": "random N(0, 1) rows (the model needs training before its routing means anything)",
    "uniform_random": "random rows as torch.nn.Linear initialises them (train before use)",
}


def _cell(prompts) -> str:
    if not prompts:
        return "—"
    return "<br>".join(p.replace("|", "\\|").replace("\n", " ") for p in prompts)


def _table(plan: MoePlan, names) -> str:
    rows = ["| expert | model | positive prompts | negative prompts |", "|---|---|---|---|"]
    n = len(plan.config.experts)
    for i, expert in enumerate(plan.config.all_experts()):
        label = str(i) if i < n else "shared"
        model = reference_md(expert.source_model, names)
        rows.append(f"| {label} | {model} | {_cell(expert.positive_prompts)} | {_cell(expert.negative_prompts)} |")
    return "\n".join(rows)


def moe_card(plan: MoePlan, config_yaml: str, name: str, *, base_dir: Path | None = None) -> str:
    config = plan.config
    refs = list(config.referenced_models())
    names = card_names(refs, base_dir)
    front = merge_front(refs, names, ["moe", plan.family])
    local = any(s.kind == "local" for s in names.values())
    shared = " plus one shared expert" if config.shared_experts else ""
    return (
        f"---\n{yaml.safe_dump(front, sort_keys=False, allow_unicode=True)}---\n# {name}\n\n"
        f"This is a mixture of experts built from dense models with {MERGESMITH_MD}.\n\n"
        "## Merge Details\n\n"
        f"A `{CLASS[plan.family]}` of {len(config.experts)} experts{shared}, "
        f"{config.experts_per_token} active per token. Attention, norms and embeddings come from "
        f"{reference_md(config.base_model, names)}; each layer's MLP is copied from every expert. "
        f"The routers were initialised from {ROUTING[config.gate_mode]} (gate_mode `{config.gate_mode}`), "
        "not trained.\n\n"
        f"### Experts\n\n{_table(plan, names)}\n\n"
        f"{LOCAL_NOTE if local else ''}"
        "### Configuration\n\n"
        "The following YAML configuration was used to produce this model:\n\n"
        f"```yaml\n{shown_recipe(config_yaml, names).rstrip()}\n```\n"
    )
