"""GGUF export for llama.cpp users: HF directory → F16/BF16 GGUF → K-quants, and what each costs.

    from mergesmith.gguf import export_gguf
    result = export_gguf("out/merged", "out/merged-GGUF", "f16,q8_0,q4_k_m")
    result.file("q4_k_m").bits_per_weight

Conversion and quantization are llama.cpp's own code: its converter script (fetched once from
the llama-cpp-python sdist, see ``converter.py``) and ``llama_model_quantize``. Needs the
``llama`` extra; ``mergesmith.io.gguf`` (reading GGUF merge inputs) is separate.
"""

__all__ = ["QUANT_TYPES", "ExportResult", "GGUFFile", "export_gguf", "parse_quants"]


def __getattr__(name):
    if name in ("export_gguf", "ExportResult", "GGUFFile"):
        from mergesmith.gguf import export

        return getattr(export, name)
    if name in ("parse_quants", "QUANT_TYPES"):
        from mergesmith.gguf import quants

        return getattr(quants, name)
    raise AttributeError(f"module 'mergesmith.gguf' has no attribute {name!r}")
