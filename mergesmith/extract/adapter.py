"""The PEFT LoRA adapter directory: tensor names, adapter_config.json, adapter_model.safetensors.

Names are PEFT's, for a model wrapped as ``PeftModel(AutoModelForCausalLM)``:

    base_model.model.<module>.lora_A.weight / .lora_B.weight     Linear factors (r, in), (out, r)
    base_model.model.<module>.lora_embedding_A / _B               Embedding factors (r, vocab), (dim, r)
    base_model.model.<module>.lora_B.bias                         bias delta, with ``lora_bias: true``
    base_model.model.<module>.base_layer.bias                     the new bias, with ``bias: lora_only``
    base_model.model.<tensor>                                     modules_to_save, whole

``lora_alpha = r`` for every module, so PEFT's scale alpha/r is 1 and B·A is the delta itself.

Ranks are known only once each SVD is done, so the safetensors file cannot be laid out in
advance (io/writer.py's ShardedWriter can): ``AdapterFile`` appends each tensor's bytes to a body
file as it comes and, at the end, writes the header and the body into the real file. Memory
stays at one tensor; the body costs one more pass over the adapter's bytes on disk.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

from mergesmith._torch import torch
from mergesmith.io.writer import ST_CODES

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
PREFIX = "base_model.model."
# How a changed bias of a LoRA target travels (see bias_mode).
NO_BIAS, LORA_BIAS, LORA_ONLY = "none", "lora_bias", "lora_only"


def factor_names(module: str, embedding: bool) -> tuple[str, str]:
    """PEFT's names of the A and B factors of ``module``."""
    if embedding:  # nn.Embedding keeps its factors as bare parameters
        return f"{PREFIX}{module}.lora_embedding_A", f"{PREFIX}{module}.lora_embedding_B"
    return f"{PREFIX}{module}.lora_A.weight", f"{PREFIX}{module}.lora_B.weight"


def bias_name(module: str, mode: str) -> str:
    return f"{PREFIX}{module}.lora_B.bias" if mode == LORA_BIAS else f"{PREFIX}{module}.base_layer.bias"


def saved_name(tensor: str) -> str:
    return PREFIX + tensor


def bias_mode(targets_with_bias: Mapping[str, bool], bias_changed: bool) -> str:
    """``lora_bias`` (PEFT ≥ 0.14: lora_B gets a bias, the fold adds scale·lora_B.bias) is the
    direct form of a bias delta, but PEFT refuses it on Embedding layers and cannot merge it into
    a Linear without a bias. So it is used only when every LoRA target has a bias (embeddings have none);
    otherwise ``bias: "lora_only"``, where PEFT loads the new bias of each target whole (also read
    by mergesmith's and mergekit's base+adapter folds)."""
    if not bias_changed:
        return NO_BIAS
    return LORA_BIAS if targets_with_bias and all(targets_with_bias.values()) else LORA_ONLY


def adapter_config(
    *, base_name: str, ranks: Mapping[str, int], saved: Sequence[str], bias: str, ensure_weight_tying: bool = False
) -> dict:
    """adapter_config.json: ``r`` is the most common rank (the larger on a tie), the others in
    rank_pattern; alpha equals rank everywhere. Module names are full, so each matches one module.
    ``ensure_weight_tying`` (a recent PEFT key) keeps a tied head tied to an embedding saved whole."""
    counts = Counter(ranks.values())
    r = max(counts, key=lambda rank: (counts[rank], rank)) if counts else 1
    pattern = {module: rank for module, rank in ranks.items() if rank != r}
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_name,
        "r": r,
        "lora_alpha": r,
        "rank_pattern": pattern,
        "alpha_pattern": dict(pattern),
        "target_modules": sorted(ranks),
        "modules_to_save": sorted(saved) or None,
        "lora_dropout": 0.0,
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "bias": "lora_only" if bias == LORA_ONLY else "none",
        "lora_bias": bias == LORA_BIAS,
        "init_lora_weights": True,
        "inference_mode": True,
    } | ({"ensure_weight_tying": True} if ensure_weight_tying else {})


def write_config(directory: Path, config: dict) -> None:
    (directory / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


class AdapterFile:
    """A safetensors file written in one pass over tensors of unknown count and shape:
    ``add`` appends bytes, ``finish`` writes the header and moves the body behind it."""

    def __init__(self, path: Path):
        self.path = path
        self._body_path = path.with_name(path.name + ".body")
        self._body = open(self._body_path, "wb")
        self._entries: dict[str, dict] = {}
        self._offset = 0

    def add(self, name: str, tensor: torch.Tensor) -> int:
        """Append ``tensor``; returns its size in bytes."""
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
        self._body.write(memoryview(data))
        end = self._offset + data.nbytes
        dtype = ST_CODES[str(tensor.dtype).removeprefix("torch.")]
        self._entries[name] = {"dtype": dtype, "shape": list(tensor.shape), "data_offsets": [self._offset, end]}
        self._offset = end
        return data.nbytes

    def finish(self) -> int:
        """Write the file; returns its size in bytes."""
        self._body.close()
        header = json.dumps({"__metadata__": {"format": "pt"}, **self._entries}, separators=(",", ":")).encode()
        header += b" " * (-len(header) % 8)  # tensor data starts 8-byte aligned
        with open(self.path, "wb") as out, open(self._body_path, "rb") as body:
            out.write(len(header).to_bytes(8, "little") + header)
            shutil.copyfileobj(body, out, 16 << 20)
        self._body_path.unlink()
        return 8 + len(header) + self._offset

    def close(self) -> None:
        """Drop an unfinished file (the staging directory is removed anyway; this frees the handle)."""
        self._body.close()
        self._body_path.unlink(missing_ok=True)
