"""What planning knows of an input model: its config and tensor headers, never its tensor data.

The planner takes ``ModelHeader``s only, so a plan can be made before any weight is on disk
(headers of Hub models come from HTTP range reads, io/hub_headers.py); execution takes
``ModelInput``s (io/resolve.py), the same facts plus a live tensor reader.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mergesmith.io.reader import TensorInfo, TensorReader


@dataclass(frozen=True)
class ModelHeader:
    """One input model as the planner sees it. ``tensors`` holds header facts (shape, dtype name).

    ``path`` is the model directory (for a Hub id, its snapshot directory, which holds config.json
    and the tokenizer files even when no weight has been downloaded) or the ``.gguf`` file.
    """

    key: str  # the reference as written in the recipe
    path: Path
    config: Mapping
    tensors: Mapping[str, TensorInfo]
    # Keyword-only, so that ModelInput can add its reader as the fifth positional field.
    gguf_file: Path | None = field(default=None, kw_only=True)

    @property
    def tokenizer_dir(self) -> Path | None:
        """Where the tokenizer files are; None for GGUF, whose tokenizer is in its metadata."""
        return None if self.gguf_file is not None else self.path

    def header(self) -> ModelHeader:
        """This model with nothing but its header facts (a ModelInput's reader left behind)."""
        if type(self) is ModelHeader:
            return self
        return ModelHeader(self.key, self.path, self.config, self.tensors, gguf_file=self.gguf_file)


@dataclass(frozen=True)
class ModelInput(ModelHeader):
    """One input opened for execution: its header facts plus a live tensor reader.

    Fields in order: key, path, config, tensors, reader (``gguf_file`` is keyword-only).
    """

    reader: TensorReader


def headers_of(models: Mapping[str, ModelHeader]) -> dict[str, ModelHeader]:
    """``models`` as headers only: what the planner keeps, whatever its caller opened."""
    return {key: model.header() for key, model in models.items()}
