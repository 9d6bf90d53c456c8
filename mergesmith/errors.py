"""The one error hierarchy of mergesmith.

Every message names the culprit (file, key, tensor, value) and says how to fix it.
The CLI prints ``str(error)`` on one line and exits with code 2.
"""

from __future__ import annotations


class MergesmithError(Exception):
    """Base class: bad input that the user can fix."""


class ConfigError(MergesmithError):
    """The recipe is malformed: unknown key or method, bad value, bad structure."""


class ArchitectureError(MergesmithError):
    """A model's architecture is unknown or does not match the others."""


class MissingTensorError(MergesmithError):
    """A tensor the plan needs is absent from an input model."""


class ShapeMismatchError(MergesmithError):
    """Inputs of one output tensor have different shapes."""


class InputFormatError(MergesmithError):
    """An input path is missing or in a format mergesmith does not read."""


class OutputExistsError(MergesmithError):
    """The output directory exists and ``force`` was not set."""


class UnsafeOutputError(MergesmithError):
    """The output path is, holds or lies inside one of the inputs: writing it could destroy them."""


class OutputWriteError(MergesmithError):
    """Writing the output failed (disk full, file-size limit, I/O error); nothing was kept."""


class NonFiniteError(MergesmithError):
    """An input tensor, or the merged result, holds NaN or infinite values."""
