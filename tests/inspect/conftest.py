"""Fixtures of the inspect tests: a 10-layer llama pair for recipe schedules."""

from __future__ import annotations

from pathlib import Path

import pytest
from pico import make_family


@pytest.fixture(scope="session")
def llama10(tmp_path_factory) -> list[Path]:
    """base and ft1, 10 layers: enough for a five-anchor gradient to bend."""
    return make_family("llama", tmp_path_factory.mktemp("llama10"), seed=5, num_layers=10, n_finetunes=1)
