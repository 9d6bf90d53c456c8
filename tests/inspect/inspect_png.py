"""PNG header reading for the inspect tests (a module of its own: conftest.py names clash across folders)."""

from __future__ import annotations

import struct
from pathlib import Path

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the PNG header; fails unless the file is a whole PNG with its IHDR chunk first."""
    data = Path(path).read_bytes()
    assert data[:8] == PNG_SIGNATURE, "not a PNG file"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13, "PNG without IHDR first"
    assert data.endswith(b"IEND\xaeB`\x82"), "PNG cut short: no IEND chunk at the end"
    return struct.unpack(">II", data[16:24])
