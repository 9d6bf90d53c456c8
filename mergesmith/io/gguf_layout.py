"""A GGUF file's header, walked once, every count, length and type checked against the file.

gguf-py trusts the counts and lengths in the file: a string length past the end of the file is
cut short without a word, and an array is walked element by element for as many elements as the
file claims (billions of empty ones: a hang and gigabytes of Python objects). It also turns every
value of every array into Python objects, which for a 49k-token vocabulary takes seconds. This
walk (llama.cpp docs/gguf.md, versions 2 and 3) checks each count and length against what the
file can hold, keeps the scalar metadata and the tensor table, and only steps over arrays:
``read_array`` decodes one when it is asked for. Plain Python; nothing it allocates is larger
than the file.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from mergesmith.errors import InputFormatError

_MAGIC = b"GGUF"
_VERSIONS = (2, 3)
_MAX_DIMS = 4  # GGML_MAX_DIMS
_MAX_NESTING = 8  # arrays of arrays; real files use none
_MAX_NUMEL = 2**63 - 1  # numpy and torch count elements in int64
_DEFAULT_ALIGNMENT = 32
_ALIGNMENT_KEY = "general.alignment"
# gguf_metadata_value_type -> struct code, for the fixed-size types.
_CODE = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_SIZE = {vtype: struct.calcsize(code) for vtype, code in _CODE.items()}
_U32, _STRING, _ARRAY = 4, 8, 9
_FIX = "re-download or re-export the GGUF"


@dataclass(frozen=True)
class ArrayValue:
    """A metadata array left in the file: its element type, length and first element's offset."""

    etype: int
    count: int
    start: int


@dataclass(frozen=True)
class TensorSpan:
    name: str
    dims: tuple[int, ...]  # GGUF order: the fastest-moving dimension first (torch's reversed)
    ggml_type: int
    start: int  # file offset of the first byte
    nbytes: int


@dataclass(frozen=True)
class Layout:
    """What the walk read. Metadata values: numbers as Python numbers, strings as their raw bytes
    (decoded by whoever reads them, so that one bad string fails only its reader), arrays as
    ``ArrayValue``."""

    path: Path
    stamp: tuple[int, int]  # (size, mtime_ns) when walked: later reads refuse a changed file
    order: str  # struct byte order: "<", or ">" for a file written big-endian
    metadata: Mapping[str, tuple[int, Any]]  # key -> (value type, value)
    tensors: tuple[TensorSpan, ...]


class _Cursor:
    """Reads the header front to back; every read is checked against the end of the file."""

    def __init__(self, path: Path, view: mmap.mmap, order: str = "<", pos: int = 0):
        self.path, self.view, self.pos, self.order = path, view, pos, order

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

    def raw(self, what: str) -> bytes:
        length = self.number(8, what)
        return bytes(self.view[self.skip(length, f"{what} ({length} bytes)") : self.pos])

    def text(self, what: str) -> str:
        raw = self.raw(what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} {raw[:80]!r} is not UTF-8") from None


def _stamp(stat: os.stat_result) -> tuple[int, int]:
    return stat.st_size, stat.st_mtime_ns


def _mapped(path: Path, stamp: tuple[int, int] | None = None) -> tuple[mmap.mmap, tuple[int, int]]:
    """The file mapped read-only; with ``stamp``, refused unless it is the file that was walked."""
    with open(path, "rb") as fh:
        now = _stamp(os.fstat(fh.fileno()))
        if stamp is not None and now != stamp:
            raise InputFormatError(f"{path}: the GGUF file changed after mergesmith opened it; run again")
        if now[0] < 24:
            raise InputFormatError(f"{path}: not a GGUF file (shorter than the 24-byte GGUF header); {_FIX}")
        return mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ), now


def check_layout(path: Path, type_sizes: Mapping[int, tuple[int, int]]) -> Layout:
    """Raise ``InputFormatError`` unless ``path`` is a GGUF whose header and tensors fit the file;
    return what the walk read.

    ``type_sizes``: ggml tensor type -> (block size in elements, block size in bytes).
    """
    try:
        view, stamp = _mapped(path)
        with view:
            return _walk(_Cursor(path, view), stamp, type_sizes)
    except OSError as exc:
        raise InputFormatError(f"{path}: cannot read the GGUF file ({exc})") from None


def _walk(cur: _Cursor, stamp: tuple[int, int], type_sizes: Mapping[int, tuple[int, int]]) -> Layout:
    if cur.view[:4] != _MAGIC:
        raise cur.fail(f"not a GGUF file (starts with {bytes(cur.view[:4])!r}, not {_MAGIC!r})")
    cur.skip(4, "magic")
    version = cur.number(4, "version")
    if version & 0xFFFF == 0:  # written on a big-endian machine; gguf-py reads those too
        cur.order, version = ">", int.from_bytes(version.to_bytes(4, "little"), "big")
    if version not in _VERSIONS:
        raise cur.fail(f"GGUF version {version}; mergesmith reads versions {_VERSIONS[0]} and {_VERSIONS[-1]}")
    n_tensors, n_kv = cur.number(8, "tensor count"), cur.number(8, "metadata count")
    # Each metadata entry takes at least 13 bytes, each tensor description 24: a count that
    # cannot fit is refused before anything walks it.
    if 13 * n_kv + 24 * n_tensors > len(cur.view) - cur.pos:
        raise cur.fail(f"the header claims {n_kv} metadata entries and {n_tensors} tensors, more than the file holds")
    metadata: dict[str, tuple[int, Any]] = {}
    for _ in range(n_kv):
        key = cur.text("a metadata key")
        if key in metadata:
            raise cur.fail(f"metadata key {key!r} appears twice")
        vtype = cur.number(4, f"the type of metadata key {key!r}")
        metadata[key] = (vtype, _value(cur, vtype, f"metadata key {key!r}"))
    alignment = _alignment(cur, *metadata.get(_ALIGNMENT_KEY, (_U32, _DEFAULT_ALIGNMENT)))
    tables = [_tensor_info(cur, type_sizes) for _ in range(n_tensors)]
    tensors = _place_tensors(cur, tables, cur.pos + (-cur.pos % alignment))
    return Layout(cur.path, stamp, cur.order, MappingProxyType(metadata), tensors)


def _value(cur: _Cursor, vtype: int, what: str) -> Any:
    if vtype in _CODE:
        return struct.unpack_from(cur.order + _CODE[vtype], cur.view, cur.skip(_SIZE[vtype], what))[0]
    if vtype == _STRING:
        return bytes(cur.view[cur.skip(cur.number(8, what), f"{what}: a string") : cur.pos])
    if vtype == _ARRAY:
        etype, count = cur.number(4, what), cur.number(8, what)
        array = ArrayValue(etype, count, cur.pos)
        _skip_array(cur, etype, count, what, 0)
        return array
    raise cur.fail(f"{what} has value type {vtype}, which is not a GGUF type")


def _skip_array(cur: _Cursor, etype: int, count: int, what: str, depth: int) -> None:
    if etype in _SIZE:
        cur.skip(count * _SIZE[etype], f"{what}: an array of {count} values")
        return
    if etype not in (_STRING, _ARRAY):
        raise cur.fail(f"{what} has value type {etype}, which is not a GGUF type")
    if count * 8 > len(cur.view) - cur.pos:  # strings and arrays take 8 bytes at least
        raise cur.fail(f"{what}: an array of {count} entries runs past the end of the file")
    if etype == _STRING:
        _skip_strings(cur, count, what)
        return
    if depth >= _MAX_NESTING:
        raise cur.fail(f"{what}: arrays nested more than {_MAX_NESTING} deep")
    for _ in range(count):
        inner, inner_count = cur.number(4, what), cur.number(8, what)
        _skip_array(cur, inner, inner_count, what, depth + 1)


def _skip_strings(cur: _Cursor, count: int, what: str) -> None:
    """Step over ``count`` strings: a vocabulary's 49k tokens are only lengths to add up here,
    so this loop is the one place where the walk's per-element cost matters."""
    unpack, view, end, pos = struct.Struct(cur.order + "Q").unpack_from, cur.view, len(cur.view), cur.pos
    for _ in range(count):
        if pos + 8 > end or (pos := pos + 8 + unpack(view, pos)[0]) > end:
            raise cur.fail(f"{what}: a string of its array runs past the end of the file ({end} bytes)")
    cur.pos = pos


def _alignment(cur: _Cursor, vtype: int, value: Any) -> int:
    if vtype != _U32 or not value or value & (value - 1):
        shown = value if vtype in _CODE else None
        raise cur.fail(f"{_ALIGNMENT_KEY} must be a power of two stored as uint32 (type {vtype}, value {shown})")
    return value


def _tensor_info(cur: _Cursor, type_sizes: Mapping[int, tuple[int, int]]) -> tuple[str, tuple[int, ...], int, int, int]:
    """A tensor's name, dimensions, type, data offset (from the data section) and byte count."""
    name = cur.text("a tensor name")
    n_dims = cur.number(4, f"tensor {name!r}: dimension count")
    if n_dims > _MAX_DIMS:
        raise cur.fail(f"tensor {name!r} has {n_dims} dimensions; GGUF allows at most {_MAX_DIMS}")
    dims = tuple(cur.number(8, f"tensor {name!r}: dimensions") for _ in range(n_dims))
    ttype, offset = cur.number(4, f"tensor {name!r}: type"), cur.number(8, f"tensor {name!r}: offset")
    if ttype not in type_sizes:
        raise cur.fail(f"tensor {name!r} has type {ttype}, which is not a ggml type this gguf package knows")
    numel = 1
    for dim in dims:
        numel *= dim or 1
    if numel > _MAX_NUMEL:
        raise cur.fail(f"tensor {name!r} has dimensions {list(dims)}, more elements than an array can hold")
    block, block_bytes = type_sizes[ttype]
    if (dims and dims[0] % block) or (block > 1 and not dims):
        raise cur.fail(
            f"tensor {name!r}: its rows of {dims[0] if dims else 'no'} elements are not whole blocks of {block}"
        )
    return name, dims, ttype, offset, (numel if 0 not in dims else 0) * block_bytes // block


def _place_tensors(cur: _Cursor, tables: list, data_start: int) -> tuple[TensorSpan, ...]:
    spans: dict[str, TensorSpan] = {}
    for name, dims, ttype, offset, nbytes in tables:
        if name in spans:
            raise cur.fail(f"tensor {name!r} appears twice")
        if data_start + offset + nbytes > len(cur.view):
            raise cur.fail(f"tensor {name!r}: its {nbytes} bytes at offset {offset} run past the end of the file")
        spans[name] = TensorSpan(name, dims, ttype, data_start + offset, nbytes)
    return tuple(spans.values())


def read_array(layout: Layout, array: ArrayValue, what: str) -> list:
    """One metadata array as a list (strings decoded as UTF-8), read from the file walked."""
    try:
        view, _ = _mapped(layout.path, layout.stamp)
        with view:
            return _decode_array(
                _Cursor(layout.path, view, layout.order, array.start), array.etype, array.count, what, 0
            )
    except OSError as exc:
        raise InputFormatError(f"{layout.path}: cannot read the GGUF file ({exc})") from None


def _decode_array(cur: _Cursor, etype: int, count: int, what: str, depth: int) -> list:
    # The walk checked all of this once; it is checked again because only size and mtime tell
    # that the file is still the one walked.
    if etype in _CODE:
        at = cur.skip(count * _SIZE[etype], f"{what}: an array of {count} values")
        return list(struct.unpack_from(f"{cur.order}{count}{_CODE[etype]}", cur.view, at))
    if etype == _STRING and count * 8 <= len(cur.view) - cur.pos:
        return [cur.text(what) for _ in range(count)]
    if etype != _ARRAY or depth >= _MAX_NESTING or count * 12 > len(cur.view) - cur.pos:
        raise cur.fail(f"{what}: an array of type {etype} and {count} entries that the file cannot hold")
    return [_decode_array(cur, cur.number(4, what), cur.number(8, what), what, depth + 1) for _ in range(count)]


def read_tensor_bytes(layout: Layout, span: TensorSpan) -> bytearray:
    """A tensor's bytes, copied out of the file walked (a fresh handle per call: readers are
    called from several worker threads at once)."""
    buf = bytearray(span.nbytes)
    try:
        with open(layout.path, "rb", buffering=0) as fh:
            if _stamp(os.fstat(fh.fileno())) != layout.stamp:
                raise InputFormatError(f"{layout.path}: the GGUF file changed after mergesmith opened it; run again")
            fh.seek(span.start)
            with memoryview(buf) as view:
                done = 0
                while done < span.nbytes:  # one read returns at most ~2 GiB on Linux
                    got = fh.readinto(view[done:])
                    if not got:
                        raise InputFormatError(f"{layout.path}: tensor {span.name} is cut short; {_FIX}")
                    done += got
    except OSError as exc:
        raise InputFormatError(f"{layout.path}: cannot read tensor {span.name} ({exc})") from None
    return buf
