"""The one device check: merging and evaluation name devices the same way and fail the same way."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mergesmith.errors import ConfigError

_AVAILABLE = {"cuda": lambda: torch.cuda.is_available(), "mps": lambda: torch.backends.mps.is_available()}


def check_device(device: str, *, kinds: Sequence[str] = ("cpu", "cuda")) -> str:
    """``cpu``, ``cuda``, ``cuda:1``… as torch names it; a ConfigError if it is not a device, not one
    of ``kinds`` (merging: cpu and cuda; evaluation adds mps), or not on this machine."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(
            f"device '{device}' is not a torch device; use {' or '.join(kinds)} (cuda:N for one GPU)"
        ) from None
    if parsed.type not in kinds:
        raise ConfigError(f"device '{device}': this runs on {' or '.join(kinds)}")
    if not _AVAILABLE.get(parsed.type, lambda: True)():
        what = "no CUDA GPU" if parsed.type == "cuda" else f"no {parsed.type} device"
        raise ConfigError(f"device '{device}': {what} is available here (torch {torch.__version__}); use device cpu")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise ConfigError(
            f"device '{device}': this machine has {torch.cuda.device_count()} CUDA GPU(s); "
            "use cuda:0 or another index that exists"
        )
    return str(parsed)
