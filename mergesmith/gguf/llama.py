"""The one place that imports llama-cpp-python, with the error that says how to install it."""

from __future__ import annotations

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
        raise MergesmithError(f"GGUF export needs llama-cpp-python, which is not installed; install it: {INSTALL}") from exc
