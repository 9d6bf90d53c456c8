"""Float GGUF → quantized GGUF through llama.cpp's quantizer (``llama_model_quantize``).

The quantizer chooses each tensor's type from the file type, exactly as ``llama-quantize``
does; mergesmith only passes the file type and a thread count. Its log (one line per tensor,
``[  12/ 273] blk.0.attn_q.weight - [...], type = f16, converting to q4_K``) is captured through
llama.cpp's log callback for the progress bar and for the error message should it fail.
"""

from __future__ import annotations

import ctypes
import re
from collections.abc import Callable
from pathlib import Path

from mergesmith.errors import ConfigError, InputFormatError
from mergesmith.eval.llama_cpp import captured_log, import_llama_cpp
from mergesmith.gguf.quants import QuantType

_TENSOR_LINE = re.compile(r"^\[\s*(\d+)/\s*(\d+)\]\s+(\S+)")


def quantize_gguf(
    source: Path,
    out_path: Path,
    quant: QuantType,
    *,
    threads: int | None = None,
    on_tensor: Callable[[str, int], None] | None = None,
) -> None:
    """Write ``out_path`` as ``quant`` from the float GGUF ``source``.

    ``on_tensor(name, total)`` is called as each tensor starts; ``threads`` None lets llama.cpp
    use every core.
    """
    if quant.tool != "quantize":
        raise ConfigError(f"{quant.name} is written by the converter, not the quantizer")
    llama_cpp = import_llama_cpp()
    ftype = getattr(llama_cpp, f"LLAMA_FTYPE_{quant.ftype}", None)
    if ftype is None:
        raise ConfigError(
            f"this llama-cpp-python has no file type {quant.ftype}; upgrade it: pip install -U 'mergesmith[llama]'"
        )
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads or 0
    log: list[str] = []

    def on_line(line: str) -> None:
        log.append(line)
        if on_tensor and (m := _TENSOR_LINE.match(line)):
            on_tensor(m.group(3), int(m.group(2)))

    with captured_log(llama_cpp, on_line):
        status = llama_cpp.llama_model_quantize(str(source).encode(), str(out_path).encode(), ctypes.byref(params))
    if status != 0 or not Path(out_path).is_file():
        Path(out_path).unlink(missing_ok=True)
        errors = [line for line in log if "fail" in line or "error" in line.lower()]
        last = (errors or log or ["no log"])[-1].strip()
        raise InputFormatError(f"llama.cpp's quantizer could not write {quant.name} from {source}: {last}")
