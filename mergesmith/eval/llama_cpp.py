"""The one place that imports llama-cpp-python (with the error that says how to install it), and
llama.cpp's log routed to Python while one call runs. Here, under eval, because GGUF evaluation needs
it and GGUF export already stands on eval (its KL report): the dependency runs one way."""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from contextlib import contextmanager
from types import ModuleType

from mergesmith.errors import MergesmithError

INSTALL = "pip install 'mergesmith[llama]'"


def import_llama_cpp() -> ModuleType:
    """``llama_cpp``, or a one-line error naming the extra (the import also fails if libllama does not load)."""
    try:
        import llama_cpp
    except (ImportError, OSError) as exc:
        raise MergesmithError(
            f"GGUF export and GGUF evaluation need llama-cpp-python, which did not import ({exc}); "
            f"install it: {INSTALL} (builds llama.cpp from source, ~10 min on 2 cores)"
        ) from exc
    return llama_cpp


def llama_cpp_version() -> str:
    """The installed llama-cpp-python version, read without loading the library."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llama-cpp-python")
    except PackageNotFoundError as exc:
        raise MergesmithError(
            f"GGUF export needs llama-cpp-python, which is not installed; install it: {INSTALL}"
        ) from exc


@contextmanager
def captured_log(llama_cpp: ModuleType, on_line: Callable[[str], None]):
    """Send llama.cpp's log lines to ``on_line`` inside the block; llama-cpp-python's own sink after.

    llama.cpp's log is process-wide; the block is one synchronous call (a quantization, a
    metadata read), so nothing else logs in between.
    """
    pending = []

    def sink(level, text, user_data):
        # llama.cpp logs a line in pieces; join them up to the newline.
        pending.append(text.decode("utf-8", errors="replace"))
        if pending[-1].endswith("\n"):
            for line in "".join(pending).splitlines():
                on_line(line)
            pending.clear()

    callback = llama_cpp.llama_log_callback(sink)  # kept referenced until restored
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
    try:
        yield
    finally:
        from llama_cpp import _logger

        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
