"""``torch``, imported on first use.

Planning never touches a tensor, yet the method modules it consults (for their parameters and
input contracts) hold torch code. Importing torch costs about a second here, which would make
``mergesmith plan`` slow; this stand-in lets those modules write ``torch.x`` as usual and
imports torch at the first attribute access, i.e. only when a tensor is really made.
"""

from __future__ import annotations

import importlib
import types


class _LazyTorch(types.ModuleType):
    def __getattr__(self, name: str):
        return getattr(importlib.import_module("torch"), name)


torch = _LazyTorch("torch")
