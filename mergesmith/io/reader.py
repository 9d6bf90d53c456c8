"""Tensor readers: the safetensors-like surface every input format offers.

A reader has ``keys()``, ``info(name)`` (shape and dtype from the header, no tensor IO)
and ``get(name)`` (one tensor). Readers never hold more than the tensor asked for.

Inputs are untrusted: a header is checked whole when the file is opened (types, offsets inside
the file, byte counts that match the shape, no overlaps) so that a later map or read can neither
fail nor reach outside the tensor, and no shard resolves outside its model directory.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from mergesmith._torch import torch
from mergesmith.errors import InputFormatError, MergesmithError, MissingTensorError
from mergesmith.io.model_files import load_json, read_index, require_inside

SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_SINGLE = "model.safetensors"
# The safetensors format's own cap on the JSON header.
MAX_HEADER_BYTES = 100_000_000

# torch counts elements (and each dimension) in a signed 64-bit integer.
_MAX_NUMEL = 2**63 - 1

# Bytes per element of the dtypes tensors are read and written in, by torch dtype name.
ITEMSIZE = {
    "float64": 8,
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "int64": 8,
    "int32": 4,
    "int16": 2,
    "int8": 1,
    "uint8": 1,
    "bool": 1,
}
# safetensors header dtype codes -> torch dtype names (the subset checkpoints use).
_ST_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}
# Byte sizes of every whole-byte safetensors dtype, read or not: byte counts are checked for all.
_ST_ITEMSIZE = {code: ITEMSIZE[name] for code, name in _ST_DTYPES.items()} | {
    "U16": 2,
    "U32": 4,
    "U64": 8,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "F8_E8M0": 1,
    "C64": 8,
}


@dataclass(frozen=True)
class TensorInfo:
    """Header facts of one tensor. The dtype is kept by name (``bfloat16``) so that planning,
    which only reads headers, never imports torch; ``dtype`` gives the torch dtype."""

    name: str
    shape: tuple[int, ...]
    dtype_name: str

    def __post_init__(self):
        if not isinstance(self.dtype_name, str):  # readers may pass a torch dtype
            object.__setattr__(self, "dtype_name", str(self.dtype_name).removeprefix("torch."))

    @property
    def dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype_name)

    @property
    def itemsize(self) -> int:
        return ITEMSIZE[self.dtype_name]


class TensorReader(Protocol):
    """What the planner and the runner need from an input checkpoint."""

    path: Path

    def keys(self) -> list[str]: ...

    def info(self, name: str) -> TensorInfo: ...

    def get(self, name: str) -> torch.Tensor: ...

    def close(self) -> None: ...


# --- the safetensors header -------------------------------------------------------------------


def read_safetensors_header(path: Path) -> dict:
    """The checked JSON header of one safetensors file: name -> dtype, shape, data_offsets."""
    return _header_and_start(path)[1]


def _header_and_start(path: Path) -> tuple[int, dict]:
    """Byte offset where tensor data begins, and the header's tensor entries, each checked."""
    raw, file_size = _header_bytes(path)
    header = load_json(path, raw, "safetensors header")
    if not isinstance(header, dict):
        raise InputFormatError(
            f"{path}: the safetensors header is a JSON {type(header).__name__}, not an object; "
            "re-download or re-export the model"
        )
    header.pop("__metadata__", None)
    data_size = file_size - 8 - len(raw)
    for name, entry in header.items():
        _check_entry(path, name, entry, data_size)
    _check_overlaps(path, header)
    return 8 + len(raw), header


def _header_bytes(path: Path) -> tuple[bytes, int]:
    """The header's bytes and the file's size. The length prefix is checked against the file
    size before reading, so a crafted prefix cannot make us allocate more than the file holds."""
    try:
        with open(path, "rb") as fh:
            file_size = os.fstat(fh.fileno()).st_size
            size = int.from_bytes(fh.read(8), "little")
            if file_size < 8 or not 0 < size <= min(MAX_HEADER_BYTES, file_size - 8):
                raise InputFormatError(
                    f"{path}: not a safetensors file (header length {size}, file size "
                    f"{file_size} bytes); re-download or re-export the model"
                )
            raw = fh.read(size)
    except OSError as exc:
        raise InputFormatError(f"{path}: cannot read safetensors header ({exc})") from exc
    if len(raw) != size:  # the file shrank since fstat
        raise InputFormatError(f"{path}: file ends inside the safetensors header; re-download the model")
    return raw, file_size


def _is_count(value: Any) -> bool:
    # JSON true/false arrive as Python bools, which are ints: a dimension is never one.
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_entry(path: Path, name: str, entry: Any, data_size: int) -> None:
    """Types, offsets inside the file's ``data_size`` bytes of data, bytes matching the shape."""
    where, fix = f"{path}: tensor {name!r:.200}", "re-download or re-export the model"
    if not isinstance(entry, dict):
        raise InputFormatError(
            f"{where}: header entry {entry!r:.80} is not an object of dtype, shape and data_offsets; {fix}"
        )
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str):
        raise InputFormatError(f'{where}: dtype {dtype!r:.80} is not a dtype name such as "F16"; {fix}')
    if not isinstance(shape, list) or not all(map(_is_count, shape)):
        raise InputFormatError(f"{where}: shape {shape!r:.80} is not a list of non-negative integers; {fix}")
    if _numel([dim or 1 for dim in shape], _MAX_NUMEL) > _MAX_NUMEL:  # torch counts in int64, even when empty
        raise InputFormatError(f"{where}: shape {shape!r:.80} has more elements than a tensor can hold; {fix}")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(map(_is_count, offsets)):
        raise InputFormatError(f"{where}: data_offsets {offsets!r:.80} is not [begin, end] in bytes; {fix}")
    begin, end = offsets
    if begin > end or end > data_size:
        raise InputFormatError(
            f"{where}: data_offsets [{begin}, {end}] lie outside the file's {data_size} bytes "
            f"of tensor data (a truncated file?); {fix}"
        )
    itemsize = _ST_ITEMSIZE.get(dtype)
    if itemsize is not None and _numel(shape, data_size) * itemsize != end - begin:
        raise InputFormatError(f"{where}: {end - begin} bytes do not hold shape {shape!r:.80} of {dtype}; {fix}")


def _numel(shape: list[int], limit: int) -> int:
    """The product of the dims, or ``limit + 1`` once it is past ``limit``: a crafted shape of
    huge dims would otherwise take a huge integer product."""
    if 0 in shape:
        return 0
    numel = 1
    for dim in shape:
        numel *= dim
        if numel > limit:
            return limit + 1
    return numel


def _check_overlaps(path: Path, header: dict) -> None:
    # Tensors sharing bytes are corrupt or crafted (safetensors itself refuses them). Sorted by
    # start, any overlap shows between neighbours.
    spans = sorted(
        (*entry["data_offsets"], name)
        for name, entry in header.items()
        if entry["data_offsets"][0] < entry["data_offsets"][1]
    )
    for (_, end, name), (begin, _, other) in zip(spans, spans[1:]):
        if begin < end:
            raise InputFormatError(
                f"{path}: tensors {name!r:.200} and {other!r:.200} share bytes (data_offsets "
                "overlap); re-download or re-export the model"
            )


class SafetensorsReader:
    """Reads a model directory of one ``model.safetensors`` or index-described shards.

    Each tensor (or element range, ``get_range``) is its own private memory map of just its
    bytes, unmapped when the tensor is freed. Mapping avoids a copy and the page faults of a
    freshly allocated buffer (together ~0.6 s per GB here, more than the merge arithmetic of a
    slerp); mapping per tensor rather than per file keeps the resident set bounded by what is in
    use: pages of a mapped file count towards it while the mapping lives.
    """

    def __init__(self, path: Path, shard_of: dict[str, Path]):
        self.path = path
        self._infos: dict[str, TensorInfo] = {}
        self._spans: dict[str, tuple[Path, int, int]] = {}  # name -> (shard, byte offset, byte count)
        self._fds: dict[Path, int] = {}
        held: dict[str, Path] = {}  # every tensor any shard's header lists -> that shard
        for shard in sorted(set(shard_of.values())):
            # require_inside again: readers are also built without open_dir (a LoRA adapter's file).
            data_start, header = _header_and_start(require_inside(path, shard))
            for name, entry in header.items():
                if name in held:
                    raise InputFormatError(
                        f"{path}: tensor {name!r:.200} is stored twice, in {held[name]} and in "
                        f"{shard}; which copy is meant is ambiguous, re-download the model"
                    )
                held[name] = shard
                if shard_of.get(name) == shard:
                    self._add(shard, data_start, name, entry)
        missing = sorted(set(shard_of) - set(self._infos))
        if missing:
            raise InputFormatError(
                f"{path / SAFETENSORS_INDEX}: lists {missing[0]!r:.200} but no shard holds it; re-download the model"
            )
        self._open_shards(sorted(set(shard_of.values())))

    def _add(self, shard: Path, data_start: int, name: str, entry: dict) -> None:
        dtype = _ST_DTYPES.get(entry["dtype"])
        if dtype is None:
            raise InputFormatError(
                f"{shard}: tensor {name!r:.200} has dtype {entry['dtype']!r:.80}, which mergesmith does not read"
            )
        begin, end = entry["data_offsets"]  # checked against the file by _header_and_start
        self._infos[name] = TensorInfo(name, tuple(entry["shape"]), dtype)
        self._spans[name] = (shard, data_start + begin, end - begin)

    def _open_shards(self, shards: list[Path]) -> None:
        # Opened once, up front: worker threads then only map, which is safe to share.
        for shard in shards:
            try:
                self._fds[shard] = os.open(shard, os.O_RDONLY)
            except OSError as exc:
                self.close()
                raise InputFormatError(f"{shard}: cannot open ({exc})") from None
        sizes = {shard: os.fstat(fd).st_size for shard, fd in self._fds.items()}
        for name, (shard, offset, count) in self._spans.items():
            if offset + count > sizes[shard]:  # the file shrank since its header was read
                self.close()  # a map past the end of the file would crash (SIGBUS) on first touch
                raise InputFormatError(f"{shard}: file ends inside tensor {name!r:.200}; re-download the model")

    @classmethod
    def open_dir(cls, path: Path) -> SafetensorsReader:
        index = path / SAFETENSORS_INDEX
        if index.is_file():
            shard_of = read_index(path, index)
            for shard in sorted(set(shard_of.values())):
                if not shard.is_file():
                    raise InputFormatError(f"{index}: shard {shard.name} is missing; re-download the model")
            return cls(path, shard_of)
        single = path / SAFETENSORS_SINGLE
        if not single.is_file():
            shards = sorted(path.glob("*.safetensors"))
            if len(shards) != 1:
                raise InputFormatError(f"{path}: no {SAFETENSORS_SINGLE} and no {SAFETENSORS_INDEX}")
            single = shards[0]
        names = read_safetensors_header(require_inside(path, single)).keys()
        return cls(path, {name: single for name in names})

    def keys(self) -> list[str]:
        return list(self._infos)

    def info(self, name: str) -> TensorInfo:
        try:
            return self._infos[name]
        except KeyError:
            raise MissingTensorError(f"{self.path}: no tensor {name}") from None

    def get(self, name: str) -> torch.Tensor:
        info = self.info(name)  # its byte count matches the shape: checked at open
        numel = self._spans[name][2] // info.itemsize
        return self.get_range(name, 0, numel).reshape(info.shape)

    def get_range(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Elements [start, stop) of the flattened tensor, without reading the rest."""
        info = self.info(name)
        shard, offset, _ = self._spans[name]
        size = info.itemsize
        begin, length = offset + start * size, (stop - start) * size
        if length <= 0:
            return torch.empty(0, dtype=info.dtype)
        aligned = begin - begin % mmap.ALLOCATIONGRANULARITY
        # ACCESS_COPY: a private, writable mapping: torch wants writable memory, and a write
        # (no method makes one) would touch a private copy, never the input file.
        view = mmap.mmap(self._fds[shard], begin - aligned + length, offset=aligned, access=mmap.ACCESS_COPY)
        return torch.frombuffer(view, dtype=info.dtype, count=stop - start, offset=begin - aligned)

    def read_range(self, name: str, start: int, stop: int, buffer: torch.Tensor) -> torch.Tensor:
        """Elements [start, stop) copied into ``buffer`` (uint8, reused by the caller): a view of it.

        For streaming: the copy lands in a buffer that is already in cache and in the page
        tables, which costs less than mapping the pages or faulting in a fresh allocation.
        """
        info = self.info(name)
        length = (stop - start) * info.itemsize
        self.read_bytes(name, start * info.itemsize, memoryview(buffer[:length].numpy()))
        return buffer[:length].view(info.dtype)

    def read_bytes(self, name: str, start: int, view: memoryview) -> None:
        """Bytes [start, start + len(view)) of ``name``'s data into ``view`` (no torch: a copy of
        bytes as they are, e.g. into an output-aligned buffer)."""
        self.info(name)
        shard, offset, count = self._spans[name]
        if start < 0 or start + len(view) > count:
            raise MergesmithError(f"internal: {name}: bytes [{start}:{start + len(view)}] outside {count}")
        done, begin = 0, offset + start
        while done < len(view):
            got = os.preadv(self._fds[shard], [view[done:]], begin + done)
            if got <= 0:
                raise InputFormatError(f"{shard}: file ends inside tensor {name}; re-download the model")
            done += got

    def close(self) -> None:
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)
