"""LoRA extraction: a PEFT adapter from a full fine-tune and its base (``mergesmith extract-lora``).

A tool on the core: it reads inputs with mergesmith.io and writes atomically with
mergesmith.output.directory; nothing in the core imports it.
"""

from mergesmith.extract.api import extract_lora
from mergesmith.extract.report import ExtractReport, TensorRow
from mergesmith.extract.tensors import UndecomposableError

__all__ = ["ExtractReport", "TensorRow", "UndecomposableError", "extract_lora"]
