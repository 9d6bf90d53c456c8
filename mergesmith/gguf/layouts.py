"""Configs llama.cpp would load but run differently from transformers, refused before converting.

llama.cpp's graph for a family fixes what transformers reads from config.json: the FFN width of
phi-2, Falcon and GPT-BigCode, where the sliding-window layers sit (Gemma 3, Command R7B), whether
the chosen experts' weights are renormalised (Qwen2-MoE never, Qwen3-MoE always), Command R's
absent q/k norms, Mamba's vocabulary padding, EXAONE 4 without sliding-window layers. Every released checkpoint of these families has the
value llama.cpp assumes; a merge can change none of them, so these refuse hand-edited or
synthetic configs, whose GGUF would otherwise load and run wrong, silently.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mergesmith.errors import ArchitectureError


def _check_phi2(config: dict, path: Path) -> None:
    """llama.cpp's phi-2 graph has no grouped-query attention and an FFN of 4 × hidden (as every released phi-2)."""
    hidden, heads = config.get("hidden_size"), config.get("num_attention_heads")
    kv_heads, ffn = config.get("num_key_value_heads") or heads, config.get("intermediate_size")
    if kv_heads != heads or ffn != 4 * hidden:
        raise ArchitectureError(
            f"{path}: llama.cpp runs phi-2 only with num_key_value_heads == num_attention_heads and intermediate_size "
            f"== 4 * hidden_size; this config has {kv_heads} key/value heads for {heads} heads and intermediate_size {ffn} "
            f"for hidden_size {hidden}, so its GGUF would not load"
        )


def _check_sliding_pattern(period: int, sliding: str, family: str) -> Callable[[dict, Path], None]:
    """llama.cpp lays out ``family``'s attention as ``period - 1`` (``sliding``) sliding-window layers, then one
    global, repeated (the converter writes no per-layer list); any other ``layer_types`` would run
    wrong, silently. Gemma 3: five and one; Command R7B (cohere2): three and one."""

    def check(config: dict, path: Path) -> None:
        types = config.get("layer_types")
        if types is None:
            return
        expected = ["full_attention" if i % period == period - 1 else "sliding_attention" for i in range(len(types))]
        if list(types) != expected:
            raise ArchitectureError(
                f"{path}: layer_types {types} differ from {sliding} sliding-window layers per global one, the "
                f"only layout llama.cpp's {family} runs; export a model with the standard layout"
            )

    return check


def _check_ffn(key: str, default_key: str) -> Callable[[dict, Path], None]:
    """llama.cpp's Falcon / GPT-BigCode graphs take the FFN width as 4 × hidden."""

    def check(config: dict, path: Path) -> None:
        hidden = config.get(default_key)
        ffn = config.get(key)
        if ffn is not None and hidden is not None and ffn != 4 * hidden:
            raise ArchitectureError(
                f"{path}: llama.cpp runs this architecture only with {key} == 4 * {default_key}; this config has "
                f"{key} {ffn} for {default_key} {hidden}, so its GGUF would not load"
            )

    return check


def _check_norm_topk(wanted: bool) -> Callable[[dict, Path], None]:
    def check(config: dict, path: Path) -> None:
        value = bool(config.get("norm_topk_prob", False))
        if value != wanted:
            raise ArchitectureError(
                f"{path}: norm_topk_prob is {str(value).lower()}, but llama.cpp's graph for this architecture "
                f"{'always' if wanted else 'never'} renormalises the chosen experts' weights, so its GGUF would run "
                "differently from transformers"
            )

    return check


def _check_no_qk_norm(config: dict, path: Path) -> None:
    if config.get("use_qk_norm"):
        raise ArchitectureError(
            f"{path}: use_qk_norm is true; llama.cpp's command-r graph has no q/k norms and refuses the file"
        )


def _check_vocab_padding(default: int) -> Callable[[dict, Path], None]:
    """llama.cpp's converter pads Mamba's vocabulary to pad_vocab_size_multiple but not the embeddings."""

    def check(config: dict, path: Path) -> None:
        vocab, multiple = config.get("vocab_size"), config.get("pad_vocab_size_multiple", default)
        if isinstance(vocab, int) and isinstance(multiple, int) and multiple > 0 and vocab % multiple:
            raise ArchitectureError(
                f"{path}: vocab_size {vocab} is not a multiple of pad_vocab_size_multiple {multiple}; llama.cpp pads "
                "the vocabulary but not the embeddings, so its GGUF would not load"
            )

    return check


def _check_no_sliding_window(config: dict, path: Path) -> None:
    """EXAONE 4 with sliding-window layers (the 32B) runs differently in llama.cpp than in
    transformers (pico: max |Δlogit| 3 times the logits' spread); without them (the 1.2B) it matches."""
    types = config.get("layer_types") or []
    if config.get("sliding_window") is not None and "sliding_attention" in types:
        raise ArchitectureError(
            f"{path}: sliding-window layers (sliding_window {config['sliding_window']}, layer_types with "
            "sliding_attention) run differently in llama.cpp's exaone4 than in transformers; export a model with "
            "global attention only (sliding_window null)"
        )


CHECKS: dict[str, Callable[[dict, Path], None]] = {
    "phi-2": _check_phi2,
    "gemma3": _check_sliding_pattern(6, "five", "gemma3"),
    "falcon": _check_ffn("ffn_hidden_size", "hidden_size"),
    "gpt_bigcode": _check_ffn("n_inner", "n_embd"),
    "cohere": _check_no_qk_norm,
    "cohere2": _check_sliding_pattern(4, "three", "cohere2"),
    "qwen2_moe": _check_norm_topk(False),
    "qwen3_moe": _check_norm_topk(True),
    "mamba": _check_vocab_padding(8),
    "falcon_mamba": _check_vocab_padding(8),
    "mamba2": _check_vocab_padding(16),
    "exaone4": _check_no_sliding_window,
}
