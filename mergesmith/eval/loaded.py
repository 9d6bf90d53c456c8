"""A model loaded for scoring: what every metric receives, whichever backend (transformers or
llama.cpp) loaded it. Its own module, so the backends need not import each other."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class LoadedModel:
    name: str  # the reference as given, for tables and messages
    model: Any  # a transformers causal LM in eval mode, or a llama.cpp model
    tokenizer: Any
    device: torch.device
    keeps_logits: bool  # forward() takes logits_to_keep (only the tail of the logits is computed)
