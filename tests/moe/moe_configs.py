"""MoE configs over pico families, written as mergekit-moe users write them."""

from __future__ import annotations

from pathlib import Path

import yaml

PROMPTS = (
    ["The quick brown fox jumps", "She sells sea shells by the sea shore"],
    ["Hello world! How are you today?", "I am fine, thank you."],
    ["A model merge averages the weights", "Numbers like 1, 2, 3 and 42"],
)


def moe_config(base: Path, experts: list[Path], **top) -> dict:
    """``experts[i]`` gets PROMPTS[i]; ``top`` sets or overrides top-level keys."""
    config = {
        "base_model": str(base),
        "gate_mode": "hidden",
        "dtype": "float32",
        "experts_per_token": 2,
        "experts": [
            {"source_model": str(model), "positive_prompts": list(PROMPTS[i % len(PROMPTS)])}
            for i, model in enumerate(experts)
        ],
    }
    config.update(top)
    return config


def write_config(folder: Path, config: dict, name: str = "moe.yml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def make_adapter(folder: Path, seed: int = 5):
    """A PEFT LoRA adapter of the seed-0 pico llama (tests/pico.py) on its MLPs, saved into
    ``folder/adapter``; returns that path and PEFT's own merge_and_unload() tensors."""
    import peft
    import torch
    from pico import build_model

    model = peft.get_peft_model(
        build_model("llama", seed=0), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["up_proj", "down_proj"])
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # PEFT starts B at zero: a fresh adapter would change nothing
        for name, param in sorted(model.named_parameters()):
            if "lora_B" in name:
                param.add_(0.1 * torch.randn(param.shape, generator=generator))
    model.save_pretrained(folder / "adapter")
    return folder / "adapter", {k: v.detach().clone() for k, v in model.merge_and_unload().state_dict().items()}
