"""Router rows, as mergekit-moe 0.1.5 computes them (mergekit/moe/router.py).

For each expert, with ``h(P)`` the mean over prompts P of a per-prompt vector per layer:

    hidden:       h = state entering the layer at the prompt's last token (hidden_avg: its mean)
    cheap_embed:  h = sum of the prompt tokens' embedding rows, normalised, the same for every layer
    row = normalise(h(positive) - h(negative))        (no negative prompts: normalise(h(positive)))

Each prompt is the tokenizer's BOS text followed by the prompt, tokenized without special tokens
and left-padded with BOS as the pad token. ``random`` rows are N(0, 1) and ``uniform_random``
U(-1/sqrt(hidden), 1/sqrt(hidden)) (torch.nn.Linear's initialisation), each router tensor drawn
from a generator seeded by (seed, tensor name), so a rerun gives the same model.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

from mergesmith._torch import torch
from mergesmith.arch.spec import arch_for_config
from mergesmith.errors import InputFormatError
from mergesmith.io.header import ModelInput
from mergesmith.moe.config import Expert
from mergesmith.moe.hidden import prompt_states
from mergesmith.moe.layout import MoePlan, OutTensor, Router

EPS = 1e-8  # mergekit's clamp of the norm
# A layer whose router rows have a condition number above this routes poorly (mergekit's threshold).
DEGENERATE_COND = 5.0


def load_tokenizer(folder: Path):
    """The tokenizer as mergekit-moe sets it up: left padding, BOS (else EOS) as the pad token."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.padding_side = "left"
    tokenizer.pad_token_id = tokenizer.bos_token_id
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def tokenize(tokenizer, prompts) -> dict:
    texts = [(tokenizer.bos_token or "") + p for p in prompts]
    return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)


def _check_ids(base: ModelInput, batch, rows: int, what: str) -> None:
    top = int(batch["input_ids"].max())
    if top >= rows:
        raise InputFormatError(
            f"base model '{base.key}': the tokenizer gives token id {top} but {what} has {rows} rows; "
            "take the tokenizer of the base model (tokenizer_source)"
        )


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(p=2, dim=-1, keepdim=True).clamp(min=EPS)


def _prompt_sets(experts: tuple[Expert, ...]) -> list[tuple[str, ...]]:
    """Positive then negative prompts of each expert, in order: ``2 * len(experts)`` sets."""
    return [s for e in experts for s in (e.positive_prompts or (), e.negative_prompts or ())]


def _rows(per_set: list[torch.Tensor | None]) -> torch.Tensor:
    """Per-set ``(layers, hidden)`` vectors (positive, negative, ...) → ``(layers, experts, hidden)``."""
    rows = []
    for positive, negative in zip(per_set[0::2], per_set[1::2]):
        rows.append(_normalise(positive - negative if negative is not None else positive))
    return torch.stack(rows, dim=1)


def _hidden_rows(plan: MoePlan, base: ModelInput, tokenizer, device: str, progress) -> torch.Tensor:
    """One forward pass over every prompt of every expert (each prompt is independent: left
    padding and the attention mask keep a batch's other prompts out of its states)."""
    sets = _prompt_sets(plan.config.all_experts())
    flat = [p for s in sets for p in s]
    average = plan.config.gate_mode == "hidden_avg"
    batch = tokenize(tokenizer, flat)
    _check_ids(base, batch, int(base.config["vocab_size"]), "its config's vocab_size")
    states = prompt_states(base, batch, average=average, device=device, progress=progress)
    per_set, start = [], 0
    for prompts in sets:
        per_set.append(states[:, start : start + len(prompts)].mean(dim=1) if prompts else None)
        start += len(prompts)
    return _rows(per_set)


def _embed_rows(plan: MoePlan, base: ModelInput, tokenizer) -> torch.Tensor:
    arch = arch_for_config(base.config, f"base model '{base.key}'")
    embed_name = next(w.name for w in arch.pre if w.role == "embed")
    embed = base.reader.get(embed_name)  # rows widened as they are picked: the same values, no float32 copy
    per_set: list[torch.Tensor | None] = []
    for prompts in _prompt_sets(plan.config.all_experts()):
        if not prompts:
            per_set.append(None)
            continue
        batch = tokenize(tokenizer, prompts)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        _check_ids(base, batch, embed.shape[0], embed_name)
        summed = (embed[ids].float() * mask[..., None]).sum(dim=(0, 1))
        per_set.append(_normalise(summed).expand(plan.num_layers, -1))
    return _rows(per_set)


def _random_router(plan: MoePlan, tensor: OutTensor, seed: int) -> torch.Tensor:
    from mergesmith.execute.runner import generator_for  # the executor's imports: only for random gates

    generator = generator_for(seed, tensor.name)
    if plan.config.gate_mode == "random":
        return torch.randn(tensor.shape, generator=generator)
    scale = math.sqrt(1.0 / plan.hidden)
    return torch.rand(tensor.shape, generator=generator) * 2 * scale - scale


def router_tensors(
    plan: MoePlan,
    models: Mapping[str, ModelInput],
    tokenizer_dir: Path | None,
    *,
    seed: int = 0,
    device: str = "cpu",
    progress: Callable[[], None] = lambda: None,
) -> dict[str, torch.Tensor]:
    """Every router tensor of the plan by output name, float32."""
    routers = [t for t in plan.tensors if isinstance(t.source, Router)]
    mode = plan.config.gate_mode
    if mode in ("random", "uniform_random"):
        return {t.name: _random_router(plan, t, seed) for t in routers}
    base = models[plan.config.base_model]
    tokenizer = load_tokenizer(tokenizer_dir)
    if mode == "cheap_embed":
        rows = _embed_rows(plan, base, tokenizer)
    else:
        rows = _hidden_rows(plan, base, tokenizer, device, progress)
    _warn_degenerate(rows, plan.source)
    n = len(plan.config.experts)
    return {t.name: rows[t.source.layer, n:] if t.source.shared else rows[t.source.layer, :n] for t in routers}


def _warn_degenerate(rows: torch.Tensor, source: str) -> None:
    """Rows nearly parallel within a layer: the router cannot tell those experts apart."""
    layers = [i for i in range(rows.shape[0]) if float(torch.linalg.cond(rows[i].float())) > DEGENERATE_COND]
    if layers:
        shown = "all layers" if len(layers) == rows.shape[0] else "layers " + ", ".join(map(str, layers))
        warnings.warn(
            f"{source}: the router rows of {shown} are nearly parallel (condition number above "
            f"{DEGENERATE_COND:g}); the experts' prompts are too alike to route between them",
            stacklevel=2,
        )
