"""Pico models of the architectures added with their data files (tests/pico.py has the first five).

Same sizes as tests/pico.py (hidden 64, vocabulary 300) and the same save path, so they ship the
pico tokenizer and load with ``AutoModelForCausalLM``. ``variant`` switches on what a data file
marks optional: ``"other_tie"`` flips the family's default for tying the head to the embeddings,
``"bias"`` turns on StableLM's q/k/v biases.
"""

from __future__ import annotations

from pathlib import Path

import torch
from pico import (
    BOS_ID,
    EOS_ID,
    HEAD_DIM,
    HEADS,
    HIDDEN,
    INTERMEDIATE,
    KV_HEADS,
    PAD_ID,
    VOCAB_SIZE,
    perturb_,
    save_model,
)

NEW_KINDS = ("qwen3", "phi3", "gemma", "gemma2", "gpt2", "gpt_neox", "stablelm", "starcoder2")
DEFAULT_LAYERS = 4
# Families that tie the head to the embeddings unless told otherwise.
TIED_BY_DEFAULT = {"gemma", "gemma2", "gpt2", "starcoder2"}


def arch_config(kind: str, num_layers: int = DEFAULT_LAYERS, variant: str = ""):
    import transformers as tf

    ids = dict(bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID)
    common = dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=num_layers,
        num_attention_heads=HEADS,
        max_position_embeddings=256,
        **ids,
    )
    tie = (kind in TIED_BY_DEFAULT) != (variant == "other_tie")
    if kind == "gpt2":
        return tf.GPT2Config(
            vocab_size=VOCAB_SIZE,
            n_embd=HIDDEN,
            n_layer=num_layers,
            n_head=HEADS,
            n_positions=256,
            tie_word_embeddings=tie,
            **ids,
        )
    if kind == "gpt_neox":
        return tf.GPTNeoXConfig(**common, tie_word_embeddings=tie)
    gqa = dict(common, num_key_value_heads=KV_HEADS, tie_word_embeddings=tie)
    if kind == "qwen3":
        return tf.Qwen3Config(**gqa, head_dim=HEAD_DIM)
    if kind == "phi3":
        return tf.Phi3Config(**gqa)
    if kind == "gemma":
        return tf.GemmaConfig(**gqa, head_dim=HEAD_DIM)
    if kind == "gemma2":
        layer_types = ["full_attention" if i % 2 else "sliding_attention" for i in range(num_layers)]
        return tf.Gemma2Config(
            **gqa, head_dim=HEAD_DIM, query_pre_attn_scalar=HEAD_DIM, sliding_window=8, layer_types=layer_types
        )
    if kind == "stablelm":
        return tf.StableLmConfig(**gqa, use_qkv_bias=variant == "bias")
    if kind == "starcoder2":
        return tf.Starcoder2Config(**gqa)
    raise ValueError(f"unknown kind {kind!r}; choose one of {', '.join(NEW_KINDS)}")


def build_arch_model(kind: str, *, seed: int, num_layers: int = DEFAULT_LAYERS, variant: str = ""):
    from transformers import AutoModelForCausalLM

    config = arch_config(kind, num_layers, variant)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model.eval()


def make_arch_family(kind: str, root: Path, *, seed: int, n_finetunes: int = 1, **kw) -> list[Path]:
    """``root/base`` and ``root/ft1..``, fine-tunes perturbed as in pico.make_family."""
    root = Path(root)
    paths = [save_model(build_arch_model(kind, seed=seed, **kw), root / "base")]
    for i in range(1, n_finetunes + 1):
        model = build_arch_model(kind, seed=seed, **kw)
        perturb_(model, torch.Generator().manual_seed(seed * 1_000_003 + i))
        paths.append(save_model(model, root / f"ft{i}"))
    return paths
