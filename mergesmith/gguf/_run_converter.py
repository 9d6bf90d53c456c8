"""Run llama.cpp's convert_hf_to_gguf.py, naming the BPE pre-tokenizer when its hash check fails.

    python _run_converter.py CONVERTER_DIR PRE_TOKENIZER|- CONVERTER_ARGS...

``mergesmith.gguf.convert`` starts this file as a script in a child process of the same Python:
the converter brings its own, newer gguf-py, which must not meet the installed ``gguf`` package
(already imported by mergesmith) in one interpreter. It imports nothing from mergesmith.

The converter's ``get_vocab_base_pre`` raises NotImplementedError for a pre-tokenizer hash it
does not know. The wrapper below calls it first and only on that error returns the name
that ``mergesmith.gguf.pretok`` derived from tokenizer.json (passed as PRE_TOKENIZER, ``-`` for
none), announcing it on stderr with MARKER so that the parent can warn. llama.cpp is not edited.
"""

import runpy
import sys
from pathlib import Path

MARKER = "mergesmith-pre-tokenizer:"


def _patch(fallback: str) -> None:
    from conversion import (
        base,  # the converter's own module, shared with the script run below
    )

    original = base.TextModel.get_vocab_base_pre

    def get_vocab_base_pre(self, tokenizer):
        try:
            return original(self, tokenizer)
        except NotImplementedError:
            if fallback == "-":
                raise
            print(f"{MARKER} {fallback}", file=sys.stderr, flush=True)
            return fallback

    base.TextModel.get_vocab_base_pre = get_vocab_base_pre


def main(argv: list) -> None:
    converter_dir, fallback, rest = Path(argv[0]), argv[1], argv[2:]
    # This script's own folder (mergesmith/gguf) must not shadow modules: put the converter first.
    sys.path[0] = str(converter_dir)
    sys.path.insert(1, str(converter_dir / "gguf-py"))
    _patch(fallback)
    script = converter_dir / "convert_hf_to_gguf.py"
    sys.argv = [str(script), *rest]
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
