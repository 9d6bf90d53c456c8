"""Pico configs of the decoder families added for issue 22, at tests/pico.py's sizes.

``FAMILY_CONFIGS`` maps a kind to (transformers config class, keyword arguments); the sizes are
pico's (hidden 64, vocabulary 300, 4 heads) under each class's own key names, and the token ids
are pico's, so the models ship the pico tokenizer. ``MERGEKIT_KINDS`` are the families mergekit
0.1.5 also defines (its differential tests); the others mergekit cannot read. ``TIED_BY_DEFAULT``
are the classes whose config ties the head unless told otherwise.
"""

from __future__ import annotations

from pico import BOS_ID, EOS_ID, HEAD_DIM, HEADS, HIDDEN, INTERMEDIATE, KV_HEADS, PAD_ID, VOCAB_SIZE

_IDS = dict(bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID)
# The llama-like classes: hidden_size / intermediate_size / num_hidden_layers / grouped-query heads.
_GQA = dict(
    vocab_size=VOCAB_SIZE,
    hidden_size=HIDDEN,
    intermediate_size=INTERMEDIATE,
    num_attention_heads=HEADS,
    num_key_value_heads=KV_HEADS,
    max_position_embeddings=256,
    **_IDS,
)
_MHA = {k: v for k, v in _GQA.items() if k != "num_key_value_heads"}
_GPT = dict(vocab_size=VOCAB_SIZE, n_embd=HIDDEN, n_head=HEADS, n_positions=256, **_IDS)
_MAMBA = dict(vocab_size=VOCAB_SIZE, hidden_size=HIDDEN, state_size=8, expand=2, conv_kernel=4, **_IDS)
_LAYER_TYPES = {"sliding": "sliding_attention", "full": "full_attention"}

FAMILY_CONFIGS: dict[str, tuple[str, dict]] = {
    # mergekit 0.1.5 defines these
    "apertus": ("ApertusConfig", dict(_GQA, head_dim=HEAD_DIM)),
    "arcee": ("ArceeConfig", dict(_GQA, head_dim=HEAD_DIM)),
    # mergekit's cohere file lists q_norm / k_norm (Command R+), so its pico model has them
    "cohere": ("CohereConfig", dict(_GQA, use_qk_norm=True)),
    "cohere2": ("Cohere2Config", dict(_GQA, sliding_window=8)),
    # falcon-40b / 180b layout (ln_attn, ln_mlp), which mergekit's file describes; falcon-7b's is a variant
    "falcon": (
        "FalconConfig",
        dict(_MHA, num_kv_heads=KV_HEADS, new_decoder_architecture=True, ffn_hidden_size=INTERMEDIATE),
    ),
    "glm4": ("Glm4Config", dict(_GQA, head_dim=HEAD_DIM)),
    "gpt_bigcode": ("GPTBigCodeConfig", dict(_GPT, n_inner=INTERMEDIATE)),
    "granite": ("GraniteConfig", dict(_GQA)),
    "mamba": ("MambaConfig", dict(_MAMBA)),
    "olmo2": ("Olmo2Config", dict(_GQA)),
    # not in mergekit 0.1.5
    "bitnet": ("BitNetConfig", dict(_GQA)),
    "bloom": ("BloomConfig", dict(vocab_size=VOCAB_SIZE, hidden_size=HIDDEN, n_head=HEADS, **_IDS)),
    "codegen": ("CodeGenConfig", dict(_GPT, n_ctx=256, n_inner=INTERMEDIATE, rotary_dim=8)),
    "ernie4_5": ("Ernie4_5Config", dict(_GQA, head_dim=HEAD_DIM)),
    "exaone4": ("Exaone4Config", dict(_GQA, sliding_window=8)),
    "falcon_mamba": ("FalconMambaConfig", dict(_MAMBA)),
    "glm": ("GlmConfig", dict(_GQA, head_dim=HEAD_DIM)),
    "lfm2": ("Lfm2Config", dict(_GQA, conv_L_cache=3)),
    # Llama 4's text model (Scout's layout: experts in every layer, stored fused per layer)
    "llama4_text": (
        "Llama4TextConfig",
        dict(_GQA, head_dim=HEAD_DIM, intermediate_size=32, intermediate_size_mlp=INTERMEDIATE, num_local_experts=4),
    ),
    "gpt_neo": (
        "GPTNeoConfig",
        dict(_MHA, num_heads=HEADS, window_size=8, attention_types=[[["global", "local"], 1]]),
    ),
    "gptj": ("GPTJConfig", dict(_GPT, n_inner=INTERMEDIATE, rotary_dim=8)),
    "falcon_h1": (
        "FalconH1Config",
        dict(_GQA, head_dim=HEAD_DIM, mamba_d_ssm=64, mamba_n_heads=4, mamba_d_head=16, mamba_d_state=8),
    ),
    "helium": ("HeliumConfig", dict(_GQA, head_dim=HEAD_DIM)),
    "hunyuan_v1_dense": (
        "HunYuanDenseV1Config",
        dict(_GQA, head_dim=HEAD_DIM, rope_parameters=dict(rope_type="default", rope_theta=1e4, alpha=1.0)),
    ),
    "jais2": ("Jais2Config", dict(_GQA, head_dim=HEAD_DIM)),
    "nemotron": ("NemotronConfig", dict(_GQA, head_dim=HEAD_DIM)),
    "mamba2": (
        "Mamba2Config",
        dict(_MAMBA, num_heads=8, head_dim=16, n_groups=1, chunk_size=16),
    ),
    "mpt": (
        "MptConfig",
        dict(vocab_size=VOCAB_SIZE, d_model=HIDDEN, n_heads=HEADS, expansion_ratio=2, max_seq_len=256, **_IDS),
    ),
    "olmo": ("OlmoConfig", dict(_GQA)),
    "olmo3": ("Olmo3Config", dict(_GQA, sliding_window=8)),
    "opt": ("OPTConfig", dict(_MHA, ffn_dim=INTERMEDIATE, word_embed_proj_dim=HIDDEN)),
    "persimmon": ("PersimmonConfig", dict(_MHA)),
    "seed_oss": ("SeedOssConfig", dict(_GQA, head_dim=HEAD_DIM)),
    "smollm3": ("SmolLM3Config", dict(_GQA)),
}
MERGEKIT_KINDS = (
    "apertus",
    "arcee",
    "cohere",
    "cohere2",
    "falcon",
    "glm4",
    "gpt_bigcode",
    "granite",
    "lfm2",
    "mamba",
    "olmo2",
)
FAMILY_KINDS = tuple(FAMILY_CONFIGS)
# mergekit 0.1.5's definitions of classes transformers 5.25 does not ship (they need remote code),
# by mergekit's file name; tests/arch/test_remote_code.py infers each from the names it lists.
REMOTE_FAMILIES = (
    "baichuan",
    "chatglm",
    "exaone",
    "internlm2",
    "jais",
    "phi3-small",
    "qwen",
    "solar",
    "stablelm",
)
# Layer-count key of each class whose key is not num_hidden_layers.
_LAYER_KEYS = {
    "mpt": "n_layers",
    "bloom": "n_layer",
    "codegen": "n_layer",
    "gptj": "n_layer",
    "gpt_bigcode": "n_layer",
    "gpt_neo": "num_layers",
}
# Configs that list one entry per layer: the list for ``n`` layers.
_PER_LAYER = {
    "cohere2": lambda n: ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n)],
    "exaone4": lambda n: ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n)],
    "olmo3": lambda n: ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n)],
    # LFM2's layers are short convolutions or attention: their tensors differ by layer type
    "lfm2": lambda n: ["conv" if i % 2 == 0 else "full_attention" for i in range(n)],
}


def family_config(kind: str, num_layers: int, tie: bool | None = None, **changes):
    """The transformers config of ``kind`` with ``num_layers`` layers; ``tie`` overrides the class default."""
    import transformers as tf

    class_name, kwargs = FAMILY_CONFIGS[kind]
    kwargs = dict(kwargs, **changes)
    kwargs[_LAYER_KEYS.get(kind, "num_hidden_layers")] = num_layers
    if kind in _PER_LAYER and "layer_types" not in changes:
        kwargs["layer_types"] = _PER_LAYER[kind](num_layers)
    if kind == "gpt_neo":
        kwargs["attention_types"] = [[["global", "local"], num_layers // 2]]
    if tie is not None:
        kwargs["tie_word_embeddings"] = tie
    return getattr(tf, class_name)(**kwargs)
