"""Fine-tunes of the session's pico bases with known deltas (tests/extract/extract_fixtures.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from extract_fixtures import low_rank_edit, variant

QKV = ("q_proj", "k_proj", "v_proj")


@pytest.fixture(scope="session")
def llama_low_rank(llama_family, tmp_path_factory) -> Path:
    """llama base + a rank-4 product on every projection, noise on every norm; embeddings and head unchanged."""
    return variant(llama_family[0], tmp_path_factory.mktemp("extract") / "llama-rank4", low_rank_edit(4, seed=11))


@pytest.fixture(scope="session")
def qwen2_qkv(qwen2_family, tmp_path_factory) -> Path:
    """qwen2 base with only q/k/v changed: a rank-4 product on each weight and noise on each bias."""
    edit = low_rank_edit(4, seed=12, match=lambda name: any(p in name for p in QKV))
    return variant(qwen2_family[0], tmp_path_factory.mktemp("extract") / "qwen2-qkv", edit)
