"""One GGUF file's metadata and tensor table, parsed once and read with types checked.

``GGUFMeta.read(path)`` walks the header once (io/gguf_layout.py: every length checked against
the file). The tensor reader, the config.json derivation and the generation config all read
this one object: pass it on rather than reading the file again (``gguf_hf_config(reader.meta)``).
Arrays stay in the file until a caller asks for one, so a 49k-token vocabulary costs one pass
over its lengths, not 49k Python strings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergesmith.errors import ArchitectureError, InputFormatError
from mergesmith.io.gguf_layout import ArrayValue, Layout, TensorSpan, check_layout, read_array

try:  # the one import of gguf-py for io/gguf*.py, which take it from here
    import gguf
except ImportError as exc:  # gguf is an optional extra; say how to get it.
    raise InputFormatError(f"reading GGUF files needs the gguf package ({exc}); pip install mergesmith[gguf]") from exc

# GGUF architecture name -> whether llama.cpp permuted the q/k rows when converting.
# Mistral is written by llama.cpp as "llama", so it is covered by the same entry.
PERMUTES_QK = {gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA]: True}
_SUPPORTED = "llama (Llama, Mistral and SmolLM exports from llama.cpp)"


@dataclass(frozen=True)
class GGUFMeta:
    layout: Layout

    @classmethod
    def read(cls, path: Path | str) -> GGUFMeta:
        path = Path(path)
        if not path.is_file():
            raise InputFormatError(f"{path}: no such GGUF file; check the model path in the recipe")
        return cls(check_layout(path, gguf.GGML_QUANT_SIZES))

    @property
    def path(self) -> Path:
        return self.layout.path

    @property
    def tensors(self) -> tuple[TensorSpan, ...]:
        return self.layout.tensors

    def get(self, key: str) -> Any:
        """The value under ``key`` (arrays as lists), or None when the file has none."""
        entry = self.layout.metadata.get(key)
        if entry is None:
            return None
        value = entry[1]
        if isinstance(value, ArrayValue):
            return read_array(self.layout, value, f"GGUF metadata {key}")
        if isinstance(value, bytes):
            try:
                return value.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputFormatError(
                    f"{self.path}: GGUF metadata {key} is unreadable ({exc}); re-export it"
                ) from None
        return value

    def count(self, key: str) -> int | None:
        """The length of the array under ``key``, without reading it; None if it is no array."""
        entry = self.layout.metadata.get(key)
        return entry[1].count if entry is not None and isinstance(entry[1], ArrayValue) else None

    def require(self, key: str) -> Any:
        value = self.get(key)
        if value is None:
            raise InputFormatError(
                f"{self.path}: GGUF metadata has no {key}; re-export the file with a current llama.cpp"
            )
        return value

    def integer(self, key: str, default: int | None = None, *, least: int = 1, required: bool = False) -> int | None:
        """One integer >= ``least`` (a count, an id); ``default`` when the key is absent."""
        value = self.require(key) if required else self.get(key)
        if value is None:
            return default
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            # Per-layer values (a list) only occur in architectures we do not read.
            what = "one positive integer" if least == 1 else f"one integer >= {least}"
            raise InputFormatError(f"{self.path}: GGUF metadata {key} = {value!r:.80}, expected {what}")
        return value

    def real(self, key: str) -> float | None:
        value = self.get(key)
        if value is None:
            return None
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < float("inf"):
            raise InputFormatError(f"{self.path}: GGUF metadata {key} = {value!r:.80}, expected one positive number")
        return float(value)

    def architecture(self) -> str:
        """``general.architecture``, refused unless mergesmith reads that architecture."""
        arch = self.require(gguf.Keys.General.ARCHITECTURE)
        if not isinstance(arch, str) or arch not in PERMUTES_QK:
            raise ArchitectureError(
                f"{self.path}: GGUF architecture {arch!r:.80} is not supported; mergesmith reads GGUF files of "
                f"{_SUPPORTED}. Merge from the Hugging Face safetensors checkpoint instead."
            )
        return arch
