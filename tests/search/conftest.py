"""Search fixtures: a writer of search files into the test's temporary directory."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml


@pytest.fixture
def write_space(tmp_path):
    def write(data: dict, name: str = "space.yml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        return path

    return write
