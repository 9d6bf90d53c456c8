"""A bounds check of a GGUF file's header, run before gguf-py parses it.

gguf-py trusts the counts and lengths in the file: a string length past the end of the file is
cut short without a word, and an array is walked element by element for as many elements as the
file claims (billions of empty ones: a hang and gigabytes of Python objects). This walk reads
every count, length and type of the header (llama.cpp docs/gguf.md, versions 2 and 3, the ones
gguf-py reads) and checks each against what the file can hold, so that gguf-py only ever sees a
header it can parse, and every tensor's bytes lie inside the file. Plain Python: no allocation
larger than a key or tensor name.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Mapping
from pathlib import Path

from mergesmith.errors import InputFormatError

_MAGIC = b"GGUF"
_VERSIONS = (2, 3)
_MAX_DIMS = 4                  # GGML_MAX_DIMS
_MAX_NESTING = 8               # arrays of arrays; real files use none
_MAX_NUMEL = 2**63 - 1         # numpy and torch count elements in int64
_DEFAULT_ALIGNMENT = 32
_ALIGNMENT_KEY = "general.alignment"
# gguf_metadata_value_type -> byte size, for the fixed-size types.
_SCALAR_SIZE = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_U32, _STRING, _ARRAY = 4, 8, 9
_FIX = "re-download or re-export the GGUF"


class _Cursor:
    """Reads the header front to back; every read is checked against the end of the file."""

    def __init__(self, path: Path, view: mmap.mmap):
        self.path, self.view, self.pos, self.order = path, view, 0, "<"

    def fail(self, what: str) -> InputFormatError:
        return InputFormatError(f"{self.path}: {what}; {_FIX}")

    def skip(self, count: int, what: str) -> int:
        if count > len(self.view) - self.pos:
            raise self.fail(f"{what} runs past the end of the file ({len(self.view)} bytes)")
        self.pos += count
        return self.pos - count

    def number(self, size: int, what: str) -> int:
        at = self.skip(size, what)
        return struct.unpack_from(self.order + ("I" if size == 4 else "Q"), self.view, at)[0]

    def text(self, what: str) -> str:
        length = self.number(8, what)
        raw = bytes(self.view[self.skip(length, f"{what} ({length} bytes)"):self.pos])
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} {raw[:80]!r} is not UTF-8") from None


def check_layout(path: Path, type_sizes: Mapping[int, tuple[int, int]]) -> None:
    """Raise ``InputFormatError`` unless ``path`` is a GGUF whose header and tensors fit the file.

    ``type_sizes``: ggml tensor type -> (block size in elements, block size in bytes).
    """
    try:
        with open(path, "rb") as fh:
            if len(fh.read(24)) < 24:
                raise InputFormatError(f"{path}: not a GGUF file (shorter than the 24-byte GGUF header); {_FIX}")
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as view:
                _check(_Cursor(path, view), type_sizes)
    except OSError as exc:
        raise InputFormatError(f"{path}: cannot read the GGUF file ({exc})") from None


def _check(cur: _Cursor, type_sizes: Mapping[int, tuple[int, int]]) -> None:
    if cur.view[:4] != _MAGIC:
        raise cur.fail(f"not a GGUF file (starts with {bytes(cur.view[:4])!r}, not {_MAGIC!r})")
    cur.skip(4, "magic")
    version = cur.number(4, "version")
    if version & 0xFFFF == 0:   # written on a big-endian machine; gguf-py reads those too
        cur.order, version = ">", int.from_bytes(version.to_bytes(4, "little"), "big")
    if version not in _VERSIONS:
        raise cur.fail(f"GGUF version {version}; mergesmith reads versions {_VERSIONS[0]} and {_VERSIONS[-1]}")
    n_tensors, n_kv = cur.number(8, "tensor count"), cur.number(8, "metadata count")
    # Each metadata entry takes at least 13 bytes, each tensor description 24: a count that
    # cannot fit is refused before anything walks it.
    if 13 * n_kv + 24 * n_tensors > len(cur.view) - cur.pos:
        raise cur.fail(f"the header claims {n_kv} metadata entries and {n_tensors} tensors, more than the file holds")
    keys: set[str] = set()
    alignment = _DEFAULT_ALIGNMENT
    for _ in range(n_kv):
        key = cur.text("a metadata key")
        if key in keys:
            raise cur.fail(f"metadata key {key!r} appears twice")
        keys.add(key)
        vtype = cur.number(4, f"the type of metadata key {key!r}")
        start = cur.pos
        _skip_value(cur, vtype, f"metadata key {key!r}", 0)
        if key == _ALIGNMENT_KEY:
            alignment = _alignment(cur, vtype, start)
    tensors = [_tensor_info(cur, type_sizes) for _ in range(n_tensors)]
    _check_tensors(cur, tensors, cur.pos + (-cur.pos % alignment))


def _skip_value(cur: _Cursor, vtype: int, what: str, depth: int) -> None:
    if vtype in _SCALAR_SIZE:
        cur.skip(_SCALAR_SIZE[vtype], what)
    elif vtype == _STRING:
        cur.skip(cur.number(8, what), f"{what}: a string")
    elif vtype == _ARRAY:
        if depth >= _MAX_NESTING:
            raise cur.fail(f"{what}: arrays nested more than {_MAX_NESTING} deep")
        etype, count = cur.number(4, what), cur.number(8, what)
        if etype in _SCALAR_SIZE:
            cur.skip(count * _SCALAR_SIZE[etype], f"{what}: an array of {count} values")
            return
        if count * 8 > len(cur.view) - cur.pos:   # strings and arrays take 8 bytes at least
            raise cur.fail(f"{what}: an array of {count} entries runs past the end of the file")
        for _ in range(count):
            _skip_value(cur, etype, what, depth + 1)
    else:
        raise cur.fail(f"{what} has value type {vtype}, which is not a GGUF type")


def _alignment(cur: _Cursor, vtype: int, start: int) -> int:
    value = struct.unpack_from(cur.order + "I", cur.view, start)[0] if vtype == _U32 else None
    if not value or value & (value - 1):
        raise cur.fail(f"{_ALIGNMENT_KEY} must be a power of two stored as uint32 (type {vtype}, value {value})")
    return value


def _tensor_info(cur: _Cursor, type_sizes: Mapping[int, tuple[int, int]]) -> tuple[str, int, int]:
    """A tensor's name, data offset (from the data section) and byte count."""
    name = cur.text("a tensor name")
    n_dims = cur.number(4, f"tensor {name!r}: dimension count")
    if n_dims > _MAX_DIMS:
        raise cur.fail(f"tensor {name!r} has {n_dims} dimensions; GGUF allows at most {_MAX_DIMS}")
    dims = [cur.number(8, f"tensor {name!r}: dimensions") for _ in range(n_dims)]
    ttype, offset = cur.number(4, f"tensor {name!r}: type"), cur.number(8, f"tensor {name!r}: offset")
    if ttype not in type_sizes:
        raise cur.fail(f"tensor {name!r} has type {ttype}, which is not a ggml type this gguf package knows")
    numel = 1
    for dim in dims:
        numel *= dim or 1
    if numel > _MAX_NUMEL:
        raise cur.fail(f"tensor {name!r} has dimensions {dims}, more elements than an array can hold")
    block, block_bytes = type_sizes[ttype]
    if dims and dims[0] % block:
        raise cur.fail(f"tensor {name!r}: its rows of {dims[0]} elements are not whole blocks of {block}")
    return name, offset, (numel if 0 not in dims else 0) * block_bytes // block


def _check_tensors(cur: _Cursor, tensors: list[tuple[str, int, int]], data_start: int) -> None:
    names: set[str] = set()
    for name, offset, nbytes in tensors:
        if name in names:
            raise cur.fail(f"tensor {name!r} appears twice")
        names.add(name)
        if data_start + offset + nbytes > len(cur.view):
            raise cur.fail(f"tensor {name!r}: its {nbytes} bytes at offset {offset} run past the end of the file")
