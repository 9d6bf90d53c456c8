"""The GGUF types ``export-gguf`` writes, as data: which llama.cpp tool makes each one.

Float types come straight from llama.cpp's HF→GGUF converter; every quantized type comes from
llama.cpp's quantizer (``llama_model_quantize``) applied to the F16 conversion. The names are
llama.cpp's file types (``LLAMA_FTYPE_MOSTLY_<NAME>``), lower-cased as llama-quantize spells them.

A file type is a recipe, not one tensor type: Q4_K_M, for instance, keeps attn_v and half of
ffn_down in Q6_K, and llama.cpp falls back to a legacy type for any tensor whose rows are not a
multiple of the 256-value K-quant block.
"""

from __future__ import annotations

from dataclasses import dataclass

from mergesmith.errors import ConfigError


@dataclass(frozen=True)
class QuantType:
    name: str  # as the user types it: q4_k_m
    ftype: str  # llama.h file type suffix: LLAMA_FTYPE_<ftype>
    tensor_type: str  # gguf.GGMLQuantizationType name of most 2-D weights
    tool: str  # "convert" (llama.cpp's converter) or "quantize" (llama_model_quantize)


def _q(name: str, tensor_type: str) -> QuantType:
    return QuantType(name, f"MOSTLY_{name.upper()}", tensor_type, "quantize")


QUANT_TYPES: tuple[QuantType, ...] = (
    QuantType("f32", "ALL_F32", "F32", "convert"),
    QuantType("f16", "MOSTLY_F16", "F16", "convert"),
    QuantType("bf16", "MOSTLY_BF16", "BF16", "convert"),
    _q("q8_0", "Q8_0"),
    _q("q6_k", "Q6_K"),
    _q("q5_k_m", "Q5_K"),
    _q("q5_k_s", "Q5_K"),
    _q("q5_1", "Q5_1"),
    _q("q5_0", "Q5_0"),
    _q("q4_k_m", "Q4_K"),
    _q("q4_k_s", "Q4_K"),
    _q("q4_1", "Q4_1"),
    _q("q4_0", "Q4_0"),
    _q("iq4_nl", "IQ4_NL"),
    _q("iq4_xs", "IQ4_XS"),
    _q("q3_k_l", "Q3_K"),
    _q("q3_k_m", "Q3_K"),
    _q("q3_k_s", "Q3_K"),
    _q("iq3_m", "IQ3_S"),
    _q("iq3_s", "IQ3_S"),
    _q("q2_k", "Q2_K"),
)
BY_NAME = {q.name: q for q in QUANT_TYPES}

# llama.cpp refuses these without an importance matrix (llama-imatrix over calibration text),
# which mergesmith does not compute; the ternary and MXFP4 types only suit models trained for them.
NEEDS_IMATRIX = ("iq1_s", "iq1_m", "iq2_xxs", "iq2_xs", "iq2_s", "iq2_m", "iq3_xxs", "iq3_xs", "q2_k_s")
NOT_FOR_DENSE = ("tq1_0", "tq2_0", "mxfp4_moe", "nvfp4", "q1_0", "q2_0")


def parse_quants(text: str) -> tuple[QuantType, ...]:
    """``"f16,q4_k_m"`` → the types, in the order given, each once; unknown names are errors."""
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    if not names:
        raise ConfigError(
            f"quants {text!r} (--quant) names no type; give e.g. f16,q8_0,q4_k_m (types: {', '.join(BY_NAME)})"
        )
    out: list[QuantType] = []
    for name in names:
        if name in NEEDS_IMATRIX:
            raise ConfigError(
                f"quant type {name!r} needs an importance matrix, which mergesmith does not compute; "
                "choose a K-quant of similar size (q2_k, q3_k_s, iq3_s) or quantize with llama-imatrix and llama-quantize"
            )
        if name in NOT_FOR_DENSE:
            raise ConfigError(
                f"quant type {name!r} is meant for ternary / MoE models only; choose one of {', '.join(BY_NAME)}"
            )
        if name not in BY_NAME:
            raise ConfigError(f"unknown quant type {name!r}; choose from {', '.join(BY_NAME)}")
        if BY_NAME[name] not in out:
            out.append(BY_NAME[name])
    return tuple(out)
