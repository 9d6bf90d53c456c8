"""The differential harness: run mergekit 0.1.5 on a recipe and compare tensors in ulps.

    require_mergekit()                     skip the calling test unless mergekit 0.1.5 is usable
    run_mergekit(recipe_yaml, out)         mergekit-yaml on CPU, out dir returned
    load_dir(path)                         every tensor of a safetensors model dir
    ulp_distance(a, b)                     elementwise distance in units in the last place
    compare(ours, ref) -> Parity           exact / within 1 ulp / differing / missing / extra

This module reads safetensors itself (not through mergesmith.io) so that the reference side
of a differential test never shares code with the side under test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

MERGEKIT_VERSION = "0.1.5"
MERGEKIT_TIMEOUT_S = 300
# ulp_distance for a NaN against a number: larger than any real distance.
NAN_DISTANCE = torch.iinfo(torch.int64).max

# Float dtype -> the signed integer dtype of the same width, for viewing bit patterns.
_INT_VIEW = {
    torch.float64: torch.int64,
    torch.float32: torch.int32,
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
}


class MergekitFailed(RuntimeError):
    """mergekit-yaml exited non-zero; the message carries the command and its stderr."""


def mergekit_script() -> Path:
    """``mergekit-yaml`` of the running interpreter's environment."""
    return Path(sys.executable).parent / "mergekit-yaml"


def require_mergekit() -> Path:
    """Skip the calling test unless mergekit 0.1.5 and its console script are installed."""
    mergekit = pytest.importorskip("mergekit")
    from importlib.metadata import version

    installed = version("mergekit")
    if installed != MERGEKIT_VERSION:
        pytest.skip(
            f"differential tests need mergekit=={MERGEKIT_VERSION}, found {installed} "
            f"({getattr(mergekit, '__file__', '?')})"
        )
    script = mergekit_script()
    if not script.is_file():
        pytest.skip(f"mergekit is importable but {script} is missing; reinstall mergekit into this venv")
    return script


def run_mergekit(recipe_yaml: str, out: Path, *, seed: int | None = None, extra_args=()) -> Path:
    """Run ``mergekit-yaml`` on ``recipe_yaml`` into ``out`` (CPU, offline); return ``out``."""
    script = require_mergekit()
    out = Path(out)
    # HF_HUB_OFFLINE: recipes name local paths; a typo must fail, not start a download.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    with tempfile.TemporaryDirectory(prefix="mergekit-recipe-") as tmp:
        recipe = Path(tmp) / "recipe.yml"
        recipe.write_text(recipe_yaml)
        cmd = [str(script), str(recipe), str(out), "--no-cuda", "--quiet"]
        if seed is not None:
            cmd += ["--random-seed", str(seed)]
        cmd += [str(arg) for arg in extra_args]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=MERGEKIT_TIMEOUT_S)
    if done.returncode != 0:
        raise MergekitFailed(
            f"mergekit-yaml exited {done.returncode}\ncommand: {' '.join(cmd)}\nrecipe:\n{recipe_yaml}\n"
            f"stderr (tail):\n{done.stderr[-4000:]}"
        )
    return out


def load_dir(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a model directory: ``model.safetensors.index.json`` shards or every file."""
    path = Path(path)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted({path / name for name in json.loads(index.read_text())["weight_map"].values()})
    else:
        shards = sorted(path.glob("*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"{path}: no safetensors files")
    tensors: dict[str, torch.Tensor] = {}
    for shard in shards:
        for name, tensor in load_file(shard).items():
            if name in tensors:
                raise ValueError(f"{path}: tensor {name} appears in more than one shard ({shard.name})")
            tensors[name] = tensor
    return tensors


def _ordered(x: torch.Tensor) -> torch.Tensor:
    """Float bits -> int64 on a line where adjacent floats are 1 apart and +0 == -0 == 0.

    IEEE floats are sign-magnitude: the magnitude bits count ulps away from zero, so
    ``key = +magnitude`` for a clear sign bit and ``-magnitude`` for a set one.
    """
    bits = x.view(_INT_VIEW[x.dtype]).to(torch.int64)
    width = torch.finfo(x.dtype).bits
    magnitude = bits & ((1 << (width - 1)) - 1)
    return torch.where(bits < 0, -magnitude, magnitude)


def ulp_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|key(a) - key(b)| elementwise as int64; NaN vs NaN is 0, NaN vs number NAN_DISTANCE."""
    if a.dtype != b.dtype or a.dtype not in _INT_VIEW:
        raise TypeError(f"ulp_distance needs two tensors of one float dtype, got {a.dtype} and {b.dtype}")
    if a.shape != b.shape:
        raise ValueError(f"ulp_distance needs equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    ka, kb = _ordered(a.contiguous()), _ordered(b.contiguous())
    # |ka - kb| can exceed int64 only for float64 of opposite signs: saturate there.
    mag_a, mag_b = ka.abs(), kb.abs()
    opposite = (ka < 0) != (kb < 0)
    overflow = opposite & (mag_a > NAN_DISTANCE - mag_b)
    dist = torch.where(opposite & ~overflow, mag_a + mag_b, (ka - kb).abs())
    dist = torch.where(overflow, torch.full_like(dist, NAN_DISTANCE), dist)
    nan_a, nan_b = a.isnan(), b.isnan()
    dist = torch.where(nan_a & nan_b, torch.zeros_like(dist), dist)
    return torch.where(nan_a ^ nan_b, torch.full_like(dist, NAN_DISTANCE), dist)


@dataclass(frozen=True)
class Parity:
    """How two tensor dicts agree. ``within_ulp`` counts tensors at most 1 ulp off, not exact."""

    exact: int
    within_ulp: int
    differing: list[str]
    missing: list[str]  # in the reference, not in ours
    extra: list[str]  # in ours, not in the reference
    reasons: dict[str, str] = field(default_factory=dict)  # differing name -> why

    @property
    def matches(self) -> bool:
        """Same names and every tensor within 1 ulp."""
        return not (self.differing or self.missing or self.extra)

    def summary(self) -> str:
        text = f"{self.exact} exact, {self.within_ulp} within 1 ulp, {len(self.differing)} differing"
        if self.differing:
            text += " (" + "; ".join(f"{n}: {self.reasons[n]}" for n in self.differing[:3])
            text += ", ...)" if len(self.differing) > 3 else ")"
        for label, names in (("missing", self.missing), ("extra", self.extra)):
            if names:
                text += f", {len(names)} {label} ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
        return text


def _tensor_verdict(ours: torch.Tensor, ref: torch.Tensor) -> tuple[int, str]:
    """(max ulp distance, reason); a dtype or shape mismatch is reported as distance -1."""
    if ours.dtype != ref.dtype:
        return -1, f"dtype {ours.dtype} vs reference {ref.dtype}"
    if ours.shape != ref.shape:
        return -1, f"shape {tuple(ours.shape)} vs reference {tuple(ref.shape)}"
    if ours.dtype not in _INT_VIEW:  # integer or bool tensors: only exact counts
        return (0, "") if torch.equal(ours, ref) else (-1, "integer values differ")
    if ours.numel() == 0:
        return 0, ""
    worst = int(ulp_distance(ours, ref).max())
    return worst, f"max {worst} ulp"


def compare(ours: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> Parity:
    """Tensor-by-tensor comparison of a mergesmith output with a reference output."""
    exact, within, differing, reasons = 0, 0, [], {}
    for name in sorted(set(ours) & set(ref)):
        worst, reason = _tensor_verdict(ours[name], ref[name])
        if worst == 0:
            exact += 1
        elif worst == 1:
            within += 1
        else:
            differing.append(name)
            reasons[name] = reason
    return Parity(
        exact=exact,
        within_ulp=within,
        differing=differing,
        missing=sorted(set(ref) - set(ours)),
        extra=sorted(set(ours) - set(ref)),
        reasons=reasons,
    )
