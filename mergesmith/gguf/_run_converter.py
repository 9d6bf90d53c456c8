"""Run llama.cpp's convert_hf_to_gguf.py, naming the BPE pre-tokenizer when its hash check fails.

    python _run_converter.py CONVERTER_DIR PRE_TOKENIZER|- CONVERTER_ARGS...

``mergesmith.gguf.convert`` starts this file as a script in a child process of the same Python:
the converter brings its own, newer gguf-py, which must not meet the installed ``gguf`` package
(already imported by mergesmith) in one interpreter. It imports nothing from mergesmith.

The converter's ``get_vocab_base_pre`` raises NotImplementedError for a pre-tokenizer hash it
does not know. The wrapper below calls it first and only on that error returns the name
that ``mergesmith.gguf.pretok`` derived from tokenizer.json (passed as PRE_TOKENIZER, ``-`` for
none), announcing it on stderr with MARKER so that the parent can warn.

The converter also reads config keys that transformers 5 no longer writes: GPT-2's ``n_ctx``
(now only ``n_positions``) and GPT-NeoX's / Cohere 2's ``rotary_pct`` (now
``rope_parameters.partial_rotary_factor``, absent when the whole head rotates). ``_legacy_keys``
adds them to the hparams the converter loads, from the keys that replaced them; a config that has
them is left as it is. llama.cpp is not edited.
"""

import runpy
import sys
from pathlib import Path

MARKER = "mergesmith-pre-tokenizer:"


def _patch(fallback: str) -> None:
    from conversion import (
        base,  # the converter's own module, shared with the script run below
    )

    # Unwrapped first, so that a process converting several models (tests/gguf/convert_batch.py)
    # wraps the converter's own function each time, with that model's fallback.
    original = getattr(base.TextModel.get_vocab_base_pre, "__wrapped__", base.TextModel.get_vocab_base_pre)

    def get_vocab_base_pre(self, tokenizer):
        try:
            return original(self, tokenizer)
        except NotImplementedError:
            if fallback == "-":
                raise
            print(f"{MARKER} {fallback}", file=sys.stderr, flush=True)
            return fallback

    get_vocab_base_pre.__wrapped__ = original
    base.TextModel.get_vocab_base_pre = get_vocab_base_pre


def _legacy_keys(hparams: dict) -> dict:
    hparams = dict(hparams)
    if "n_positions" in hparams:
        hparams.setdefault("n_ctx", hparams["n_positions"])
    if hparams.get("model_type") in ("gpt_neox", "cohere2"):
        rope = hparams.get("rope_parameters") or {}
        hparams.setdefault("rotary_pct", hparams.get("partial_rotary_factor", rope.get("partial_rotary_factor", 1.0)))
    return hparams


def _patch_hparams() -> None:
    from conversion import base

    original = getattr(base.ModelBase.load_hparams, "__wrapped__", base.ModelBase.load_hparams)

    def load_hparams(dir_model, is_mistral_format):
        return _legacy_keys(original(dir_model, is_mistral_format))

    load_hparams.__wrapped__ = original
    base.ModelBase.load_hparams = staticmethod(load_hparams)


def main(argv: list) -> None:
    converter_dir, fallback, rest = Path(argv[0]), argv[1], argv[2:]
    # This script's own folder (mergesmith/gguf) must not shadow modules: put the converter first.
    sys.path[0] = str(converter_dir)
    sys.path.insert(1, str(converter_dir / "gguf-py"))
    _patch(fallback)
    _patch_hparams()
    script = converter_dir / "convert_hf_to_gguf.py"
    sys.argv = [str(script), *rest]
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
