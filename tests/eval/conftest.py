"""Fixtures of the evaluation tests: a text, and pico llamas at known distances from one base."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pico import CORPUS, build_model, perturb_, save_model

NOISE_SCALES = (1e-4, 1e-3, 1e-2, 3e-2)


@pytest.fixture(scope="session")
def eval_text(tmp_path_factory) -> Path:
    """About 600 pico tokens: several windows at context 64."""
    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_text("\n".join(CORPUS * 5) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def noisy_llamas(tmp_path_factory) -> dict[float, Path]:
    """scale → base + scale * randn (the same draw at every scale); scale 0 is the base."""
    root = tmp_path_factory.mktemp("noisy")
    out = {}
    for scale in (0.0,) + NOISE_SCALES:
        model = build_model("llama", seed=0)
        if scale:
            perturb_(model, torch.Generator().manual_seed(7), scale=scale)
        out[scale] = save_model(model, root / f"noise-{scale:g}")
    return out
