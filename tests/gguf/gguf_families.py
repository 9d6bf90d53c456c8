"""Pico models of every family GGUF export supports beyond the first five, as llama.cpp runs them.

The sizes are tests/pico.py's (hidden 64, vocabulary 300): the logits check needs no K-quant
block. Where llama.cpp's graph fixes what transformers leaves free, the pico config takes the
value every released checkpoint has: an FFN of 4 × hidden (Falcon, GPT-BigCode), a vocabulary
padded to a multiple of 8 (Mamba), no q/k norms (Command R), three sliding-window layers per
global one (Command R7B). Families whose converter reads a SentencePiece ``tokenizer.model`` get
one trained on pico's corpus; GLM-4 and Phi-3 get the special tokens their converter or llama.cpp
look up by name (the logits check feeds token ids, so the tokenizers need not agree).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

# The pico builders of the architecture tests (tests/arch) are not on the path of a run that
# collects tests/gguf alone (rootdir conftest puts only tests/ there).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "arch"))
from arch_pico import NEW_KINDS, arch_config
from families import family_config
from moe_pico import MOE_KINDS, moe_config
from pico import CORPUS, HIDDEN, SPECIAL_TOKENS, VOCAB_SIZE, save_model

# Families whose llama.cpp converter reads tokenizer.model.
SENTENCEPIECE = ("phi3", "gemma", "gemma2", "ernie4_5", "nemotron")
# Special tokens the converter or llama.cpp look up by name, added after pico's 300 entries.
SPECIAL_BY_NAME = {"glm4": ("<|endoftext|>", "<|user|>"), "phi3": ("<|endoftext|>", "<|end|>", "<|assistant|>")}
# What llama.cpp's graph fixes (see the module docstring).
_LLAMA_CPP_SHAPES = {
    "falcon": dict(ffn_hidden_size=4 * HIDDEN),
    "gpt_bigcode": dict(n_inner=4 * HIDDEN),
    "mamba": dict(vocab_size=304),
    "falcon_mamba": dict(vocab_size=304),
    "mamba2": dict(vocab_size=304),
    "cohere": dict(use_qk_norm=False),
    "qwen3_moe": dict(norm_topk_prob=True),  # llama.cpp's qwen3moe renormalises, as Qwen3-MoE's configs ask
    "phi3": dict(vocab_size=VOCAB_SIZE + 4),
    "exaone4": dict(sliding_window=None, layer_types=["full_attention"] * 2),  # EXAONE 4.0 1.2B
    # GLM-4's converter names <|endoftext|> and <|user|>, llama.cpp's phi3 <|endoftext|>, <|end|> and
    # <|assistant|>, as special tokens: room for them
    "glm4": dict(vocab_size=VOCAB_SIZE + 4),
    # llama.cpp's sliding-window layout: three sliding-window layers, then a global one
    "cohere2": dict(layer_types=["sliding_attention"] * 3 + ["full_attention"]),
}
GGUF_KINDS = (
    "qwen3",
    "phi3",
    "gemma",
    "gemma2",
    "starcoder2",
    "stablelm",
    "gpt2",
    "gpt_neox",
    "mixtral",
    "qwen2_moe",
    "qwen3_moe",
    "apertus",
    "arcee",
    "cohere",
    "cohere2",
    "falcon",
    "gpt_bigcode",
    "granite",
    "mamba",
    "olmo2",
    "bloom",
    "ernie4_5",
    "falcon_mamba",
    "jais2",
    "nemotron",
    "olmo",
    "olmo3",
    "seed_oss",
    "smollm3",
    "lfm2",
    "glm4",
    "exaone4",
    "mamba2",
    "falcon_h1",
    "hunyuan_v1_dense",
)


def _config(kind: str):
    changes = _LLAMA_CPP_SHAPES.get(kind, {})
    if kind not in NEW_KINDS + MOE_KINDS:
        return family_config(kind, len(changes.get("layer_types", "ab")), **changes)
    config = arch_config(kind, 2) if kind in NEW_KINDS else moe_config(kind, 2)
    for key, value in changes.items():
        setattr(config, key, value)
    return config


def _build(kind: str):
    from transformers import AutoModelForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return AutoModelForCausalLM.from_config(_config(kind), dtype=torch.float32).eval()


def write_sentencepiece(path: Path) -> None:
    """``path/tokenizer.model``: a SentencePiece BPE model of pico's first sentence, pico's special ids 0..3."""
    import sentencepiece as spm

    spm.SentencePieceTrainer.train(
        # One sentence: 256 byte pieces, 4 specials and its 29 characters fit the 300 entries.
        sentence_iterator=iter(CORPUS[:1]),
        model_prefix=str(path / "tokenizer"),
        model_type="bpe",
        vocab_size=VOCAB_SIZE,
        hard_vocab_limit=False,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=3,
        unk_piece=SPECIAL_TOKENS[0],
        bos_piece=SPECIAL_TOKENS[1],
        eos_piece=SPECIAL_TOKENS[2],
        pad_piece=SPECIAL_TOKENS[3],
        byte_fallback=True,  # llama.cpp's SentencePiece vocabulary looks up byte pieces (<0x0A>)
        minloglevel=2,
    )
    (path / "tokenizer.vocab").unlink()


def add_special_tokens(path: Path, tokens) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.add_special_tokens({"additional_special_tokens": list(tokens)})
    tokenizer.save_pretrained(path)


def make_gguf_model(kind: str, path: Path) -> Path:
    save_model(_build(kind), path)
    if kind in SENTENCEPIECE:
        write_sentencepiece(path)
    if kind in SPECIAL_BY_NAME:
        add_special_tokens(path, SPECIAL_BY_NAME[kind])
    return path
