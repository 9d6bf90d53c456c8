"""Helpers for the extract-lora tests: fine-tunes with a known delta, and an adapter fold written
here from PEFT's rules (safetensors + JSON only), so the side under test shares no code with it.

    variant(base, out, edit)            a copy of the model directory ``base`` with edited tensors
    low_rank_edit(rank, seed, match)    edit: + a known rank-``rank`` product on matching matrices,
                                        + noise on matching vectors (norms, biases)
    reference_fold(base, adapter)       base tensors + (alpha/r)·B·A, saved modules, bias deltas
    relative(a, b)                      ‖a − b‖ / ‖b‖ in float64
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

WEIGHTS = "model.safetensors"
PREFIX = "base_model.model."
SCALE = 0.02  # the pico fine-tune scale (tests/pico.py FINETUNE_SCALE)


def variant(base: Path, out: Path, edit) -> Path:
    """``out``: ``base`` with every tensor passed through ``edit(name, tensor)``."""
    shutil.copytree(base, out)
    tensors = {name: edit(name, t).contiguous() for name, t in sorted(load_file(base / WEIGHTS).items())}
    save_file(tensors, out / WEIGHTS, metadata={"format": "pt"})
    return out


def low_rank_edit(rank: int, seed: int, match=lambda name: True):
    """Matrices whose name ``match``es (embeddings and head aside) get + U·V of rank ``rank``; matching 1-D
    tensors get + noise; everything else is left as it is."""
    generator = torch.Generator().manual_seed(seed)

    def edit(name: str, tensor: torch.Tensor) -> torch.Tensor:
        if not match(name) or "embed" in name or "lm_head" in name:
            return tensor
        if tensor.dim() == 2:
            u = torch.randn(tensor.shape[0], rank, generator=generator) * SCALE
            v = torch.randn(rank, tensor.shape[1], generator=generator)
            return tensor + (u @ v).to(tensor.dtype)
        return tensor + SCALE * torch.randn(tensor.shape, generator=generator).to(tensor.dtype)

    return edit


def _scale(config: dict, module: str) -> float:
    r = config["rank_pattern"].get(module, config["r"])
    return config["alpha_pattern"].get(module, config["lora_alpha"]) / r


def reference_fold(base: Path, adapter: Path) -> dict[str, torch.Tensor]:
    """The base's tensors with the adapter applied as PEFT's merge_and_unload() does, in float64."""
    config = json.loads((adapter / "adapter_config.json").read_text())
    factors = load_file(adapter / "adapter_model.safetensors")
    tensors = {name: t.double() for name, t in load_file(base / WEIGHTS).items()}
    for key, value in factors.items():
        name = key.removeprefix(PREFIX)
        module, _, kind = name.partition(".lora_")
        if kind in ("A.weight", "embedding_A"):
            b = factors[key.replace("lora_A", "lora_B").replace("lora_embedding_A", "lora_embedding_B")]
            update = _scale(config, module) * (b.double() @ value.double())
            tensors[module + ".weight"] += update.T if kind == "embedding_A" else update
        elif kind == "B.bias" and config.get("lora_bias"):  # without the flag PEFT drops it
            tensors[module + ".bias"] += _scale(config, module) * value.double()
        elif name.endswith(".base_layer.bias") and config.get("bias", "none") != "none":
            tensors[name.replace(".base_layer", "")] = value.double()
        elif not kind:  # saved whole; a tied head is saved beside its embedding under ensure_weight_tying
            saved = name.rpartition(".")[0]
            assert any(saved.endswith(m) for m in config["modules_to_save"] or ()) or (  # PEFT's rule: endswith
                config.get("ensure_weight_tying") and name not in tensors
            ), key
            tensors[name] = value.double()
    return tensors


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm()) if b.norm() else float((a - b).norm())


def add_tensor(folder: Path, name: str, tensor: torch.Tensor) -> None:
    """Write ``tensor`` into ``folder``'s model.safetensors as ``name``."""
    weights = load_file(folder / WEIGHTS) | {name: tensor}
    save_file(weights, folder / WEIGHTS, metadata={"format": "pt"})


def same(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """An edit that changes nothing (``variant(base, out, same)`` copies)."""
    return tensor
