"""config.json and generation_config.json of the model a llama-family GGUF was converted from.

The GGUF keys and the config.json names they map to are those of transformers' own GGUF loader
(GGUF_CONFIG_MAPPING["llama"] and ["tokenizer"] in transformers/integrations/ggml.py), which
also ties the embeddings when the file has no ``output.weight``. Mapped here because that loader
parses the whole file with gguf-py, vocabulary included: seconds and hundreds of MB for a dozen
numbers. tests/io/test_gguf_meta.py pins the result against transformers on SmolLM2.
"""

from __future__ import annotations

from mergesmith.io.gguf_meta import GGUFMeta, gguf

_K = gguf.Keys
# {arch}-scoped GGUF key -> config.json key; all counts (positive integers).
_COUNTS = {
    _K.LLM.VOCAB_SIZE: "vocab_size",
    _K.LLM.EMBEDDING_LENGTH: "hidden_size",
    _K.LLM.FEED_FORWARD_LENGTH: "intermediate_size",
    _K.LLM.BLOCK_COUNT: "num_hidden_layers",
    _K.Attention.HEAD_COUNT: "num_attention_heads",
    _K.Attention.HEAD_COUNT_KV: "num_key_value_heads",
    _K.Rope.DIMENSION_COUNT: "head_dim",  # rope covers the whole head in llama-family models
    _K.LLM.CONTEXT_LENGTH: "max_position_embeddings",
}
# Without these the model's shapes are unknown: transformers' defaults (4096 wide, 32 layers)
# would describe some other model.
_REQUIRED = (_K.LLM.EMBEDDING_LENGTH, _K.LLM.FEED_FORWARD_LENGTH, _K.LLM.BLOCK_COUNT, _K.Attention.HEAD_COUNT)
_REALS = {_K.Attention.LAYERNORM_RMS_EPS: "rms_norm_eps", _K.Rope.FREQ_BASE: "rope_theta"}
_TOKEN_IDS = {
    _K.Tokenizer.BOS_ID: "bos_token_id",
    _K.Tokenizer.EOS_ID: "eos_token_id",
    _K.Tokenizer.UNK_ID: "unk_token_id",
    _K.Tokenizer.PAD_ID: "pad_token_id",
}
_GENERATION_IDS = (_K.Tokenizer.BOS_ID, _K.Tokenizer.EOS_ID)
_OUTPUT = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.OUTPUT] + ".weight"
_TOKEN_EMBD = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.TOKEN_EMBD] + ".weight"
# ".attn_q.bias" ...: the names of bias tensors, whatever the block number.
_ATTN_BIASES = tuple(
    "." + gguf.TENSOR_NAMES[kind].split(".", 2)[-1] + ".bias"
    for kind in (
        gguf.MODEL_TENSOR.ATTN_Q,
        gguf.MODEL_TENSOR.ATTN_K,
        gguf.MODEL_TENSOR.ATTN_V,
        gguf.MODEL_TENSOR.ATTN_OUT,
    )
)
_MLP_BIASES = tuple(
    "." + gguf.TENSOR_NAMES[kind].split(".", 2)[-1] + ".bias"
    for kind in (gguf.MODEL_TENSOR.FFN_GATE, gguf.MODEL_TENSOR.FFN_UP, gguf.MODEL_TENSOR.FFN_DOWN)
)


def hf_config(meta: GGUFMeta) -> dict:
    """The ``config.json`` (LlamaForCausalLM) of the model ``meta`` describes."""
    arch = meta.architecture()
    config: dict = {"architectures": ["LlamaForCausalLM"], "model_type": "llama"}
    for key, name in _COUNTS.items():
        value = meta.integer(key.format(arch=arch), required=key in _REQUIRED)
        if value is not None:
            config[name] = value
    config.setdefault("num_key_value_heads", config["num_attention_heads"])  # no kv count: plain multi-head
    if "vocab_size" not in config and _vocab_size(meta) is not None:
        config["vocab_size"] = _vocab_size(meta)
    for key, name in _REALS.items():
        value = meta.real(key.format(arch=arch))
        if value is not None:
            config[name] = value
    config.update(_token_ids(meta, _TOKEN_IDS))
    names = {span.name for span in meta.tensors}
    config["tie_word_embeddings"] = _OUTPUT not in names
    # transformers' loader leaves these at LlamaConfig's False; read from the tensors instead, so a
    # llama export with biases does not load with them silently dropped.
    config["attention_bias"] = any(name.endswith(_ATTN_BIASES) for name in names)
    config["mlp_bias"] = any(name.endswith(_MLP_BIASES) for name in names)
    config["hidden_act"] = "silu"  # the only activation llama.cpp's llama architecture computes
    return config


def _vocab_size(meta: GGUFMeta) -> int | None:
    """Older exports have no {arch}.vocab_size: the token list's length, else the embedding's rows."""
    count = meta.count(_K.Tokenizer.LIST)
    if count:
        return count
    embedding = next((span for span in meta.tensors if span.name == _TOKEN_EMBD), None)
    return embedding.dims[-1] if embedding is not None and len(embedding.dims) == 2 else None


def _token_ids(meta: GGUFMeta, keys: dict) -> dict:
    found = {}
    for key, name in keys.items():
        value = meta.integer(key, least=0)
        if value is not None:
            found[name] = value
    return found


def generation_config(meta: GGUFMeta) -> dict | None:
    """``generation_config.json`` token ids, or None when the file names none."""
    return _token_ids(meta, {key: _TOKEN_IDS[key] for key in _GENERATION_IDS}) or None
