"""Pico vision-language models and text-only models of their language model.

Qwen2-VL, Qwen2.5-VL, Gemma 3 and LLaVA (with a Llama language model) at tests/pico.py's text
sizes and a two-block vision tower. ``language_model_of`` saves the VLM's language model as the
text-only class a text fine-tune of the same base would have, so a test can make one.
"""

from __future__ import annotations

from pathlib import Path

import torch
from pico import BOS_ID, EOS_ID, HEAD_DIM, HEADS, HIDDEN, INTERMEDIATE, KV_HEADS, PAD_ID, VOCAB_SIZE, save_model

VLM_KINDS = ("qwen2_vl", "qwen2_5_vl", "gemma3", "llava")
TEXT_CLASS = {"qwen2_vl": "qwen2", "qwen2_5_vl": "qwen2", "gemma3": "gemma3_text", "llava": "llama"}


def _text(num_layers: int) -> dict:
    return dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=num_layers,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        head_dim=HEAD_DIM,
        max_position_embeddings=256,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
    )


def vlm_config(kind: str, num_layers: int = 2):
    import transformers as tf

    text = _text(num_layers)
    mrope = dict(text, rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]})
    ids = dict(image_token_id=290, video_token_id=291, vision_start_token_id=292)
    if kind == "qwen2_vl":
        vision = dict(depth=2, embed_dim=32, hidden_size=HIDDEN, num_heads=2, mlp_ratio=2, spatial_merge_size=2)
        return tf.Qwen2VLConfig(text_config=mrope, vision_config=vision, **ids)
    if kind == "qwen2_5_vl":
        vision = dict(depth=2, hidden_size=32, out_hidden_size=HIDDEN, intermediate_size=64, num_heads=2)
        return tf.Qwen2_5_VLConfig(text_config=mrope, vision_config=dict(vision, fullatt_block_indexes=[1]), **ids)
    small_vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    if kind == "gemma3":
        vision = dict(small_vision, image_size=28, patch_size=14, vision_use_head=False)
        return tf.Gemma3Config(
            text_config=dict(text, sliding_window=8), vision_config=vision, mm_tokens_per_image=4, image_token_index=290
        )
    if kind == "llava":
        vision = tf.CLIPVisionConfig(**small_vision, image_size=28, patch_size=14)
        return tf.LlavaConfig(text_config=tf.LlamaConfig(**text), vision_config=vision, image_token_index=290)
    raise ValueError(f"unknown kind {kind!r}; choose one of {', '.join(VLM_KINDS)}")


def build_vlm(kind: str, *, seed: int, **kw):
    from transformers import AutoModelForImageTextToText

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForImageTextToText.from_config(vlm_config(kind, **kw), dtype=torch.float32)
    return model.eval()


def language_model_of(vlm, kind: str):
    """A text-only model (the class of TEXT_CLASS[kind]) holding ``vlm``'s language model."""
    from transformers import AutoConfig, AutoModelForCausalLM

    text = vlm.config.text_config.to_dict()
    for key in ("model_type", "architectures", "rope_scaling", "rope_parameters", "dtype", "torch_dtype"):
        text.pop(key, None)
    config = AutoConfig.for_model(TEXT_CLASS[kind], **text)
    config.tie_word_embeddings = vlm.config.tie_word_embeddings
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    state = {
        name.replace("model.language_model.", "model."): tensor
        for name, tensor in vlm.state_dict().items()
        if name.startswith(("model.language_model.", "lm_head."))
    }
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    return model


def save_vlm(model, path: Path) -> Path:
    return save_model(model, Path(path))
