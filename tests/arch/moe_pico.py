"""Pico mixture-of-experts models: Mixtral, Qwen2-MoE and Qwen3-MoE at tests/pico.py's sizes.

Four experts of two per token, saved with ``save_pretrained`` (which writes each expert's
projections as separate tensors, the layout the Hub checkpoints and llama.cpp's converter use).
"""

from __future__ import annotations

from pathlib import Path

import torch
from pico import BOS_ID, EOS_ID, HEAD_DIM, HEADS, HIDDEN, KV_HEADS, PAD_ID, VOCAB_SIZE, perturb_, save_model

MOE_KINDS = ("mixtral", "qwen2_moe", "qwen3_moe")
EXPERTS = 4
EXPERT_INTERMEDIATE = 32


def moe_config(kind: str, num_layers: int = 2, experts: int = EXPERTS):
    import transformers as tf

    common = dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=HIDDEN,
        num_hidden_layers=num_layers,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=256,
        num_experts_per_tok=2,
        tie_word_embeddings=False,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
    )
    if kind == "mixtral":
        return tf.MixtralConfig(**common, intermediate_size=EXPERT_INTERMEDIATE, num_local_experts=experts)
    moe = dict(common, num_experts=experts, moe_intermediate_size=EXPERT_INTERMEDIATE, head_dim=HEAD_DIM)
    if kind == "qwen2_moe":
        return tf.Qwen2MoeConfig(**moe, intermediate_size=48, shared_expert_intermediate_size=48)
    if kind == "qwen3_moe":
        return tf.Qwen3MoeConfig(**moe, intermediate_size=48)
    raise ValueError(f"unknown kind {kind!r}; choose one of {', '.join(MOE_KINDS)}")


def build_moe_model(kind: str, *, seed: int, **kw):
    from transformers import AutoModelForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(moe_config(kind, **kw), dtype=torch.float32)
    return model.eval()


def make_moe_family(kind: str, root: Path, *, seed: int = 0, n_finetunes: int = 1, **kw) -> list[Path]:
    """``root/base`` and ``root/ft1..``: fine-tunes are the base plus seeded noise, as pico.make_family."""
    root = Path(root)
    paths = [save_model(build_moe_model(kind, seed=seed, **kw), root / "base")]
    for i in range(1, n_finetunes + 1):
        model = build_moe_model(kind, seed=seed, **kw)
        perturb_(model, torch.Generator().manual_seed(seed * 1_000_003 + i))
        paths.append(save_model(model, root / f"ft{i}"))
    return paths
