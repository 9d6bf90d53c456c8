"""Seeded fuzzing of the two binary header readers: safetensors and GGUF metadata.

Each case is a small file: a valid one with bytes, lengths, counts or types changed, or a random
structure. Reading it (open, every key, every tensor) must either succeed or raise a
``MergesmithError``; never another exception type, never hang (each case runs under an alarm),
never allocate far beyond the file's size (tracemalloc peak). Cases are seeded per index, so a
failure report names the case to replay: ``safetensors_case(i)`` / ``gguf_case(i)``.
"""

from __future__ import annotations

import json
import math
import random
import signal
import struct
import sys
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from mergesmith.errors import MergesmithError
from mergesmith.io.reader import SafetensorsReader

N_CASES = 10_000
CASE_SECONDS = 2.0
# Allowed tracemalloc peak per case: a fixed slack for Python objects plus a multiple of the
# file size (a dequantised tensor is at most 8x its bytes). A header length or element count
# taken on trust from the file shows up here as megabytes or gigabytes.
ALLOC_SLACK, ALLOC_PER_BYTE = 2 << 20, 16

# Values that break type, sign, range and length assumptions when put anywhere in a header.
WEIRD = [
    -1,
    0,
    1,
    3,
    2**31,
    2**32 + 1,
    2**63,
    2**64,
    10**30,
    1.5,
    float("nan"),
    "3",
    "",
    None,
    True,
    False,
    [],
    {},
    [1],
    [1, 2, 3],
    [-1, 4],
    [4, 1],
    [0, 10**6],
    ["a", "b"],
    [[1]],
    {"a": 1},
    "F32",
    [2**64, 0],
]
INTERESTING_U64 = [0, 1, 2, 7, 8, 31, 32, 33, 255, 2**16, 2**31 - 1, 2**32 - 1, 2**32, 2**62, 2**63, 2**64 - 1]


class _Timeout(BaseException):
    """Raised by the alarm; a BaseException so no ``except Exception`` under test can swallow it."""


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    def expire(signum, frame):
        raise _Timeout

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_cases(
    target: Callable[[Path], None], make_case: Callable[[int], bytes], path: Path, n_cases: int = N_CASES
) -> dict[str, list]:
    """Failures by kind -> [count, first case index, first message]."""
    failures: dict[str, list] = {}

    def fail(kind: str, index: int, message: str) -> None:
        failures.setdefault(kind, [0, index, message[:200]])[0] += 1

    tracemalloc.start()
    try:
        for index in range(n_cases):
            data = make_case(index)
            path.unlink(missing_ok=True)  # a fresh inode: no earlier mapping sees the new bytes
            path.write_bytes(data)
            tracemalloc.reset_peak()
            before = tracemalloc.get_traced_memory()[0]
            try:
                with deadline(CASE_SECONDS):
                    target(path)
            except MergesmithError:
                pass
            except _Timeout:
                fail("hang", index, f"over {CASE_SECONDS} s")
            except Exception as exc:  # the defect under test: any exception type but ours
                fail(type(exc).__name__, index, str(exc))
            peak = tracemalloc.get_traced_memory()[1] - before
            if peak > ALLOC_SLACK + ALLOC_PER_BYTE * len(data):
                fail("allocation", index, f"{peak} bytes for a {len(data)}-byte file")
    finally:
        tracemalloc.stop()
    return failures


def _report(failures: dict[str, list]) -> str:
    total = sum(count for count, _, _ in failures.values())
    kinds = "; ".join(f"{kind} x{count} (first: case {i}: {msg})" for kind, (count, i, msg) in failures.items())
    return f"{total} of {N_CASES} cases failed: {kinds}"


# --- safetensors ----------------------------------------------------------------------------

ST_ITEMSIZE = {"F32": 4, "F16": 2, "BF16": 2, "I64": 8, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "U32": 4}
ST_DTYPES = [*ST_ITEMSIZE, "XYZ", "", "f32"]


def _st_valid(rng: random.Random) -> tuple[dict, bytes]:
    header, data = {}, b""
    for k in range(rng.randint(1, 4)):
        dtype = rng.choice(["F32", "F16", "BF16", "I64", "U8", "BOOL"])
        shape = [rng.randint(0, 3) for _ in range(rng.randint(0, 3))]
        count = math.prod(shape) * ST_ITEMSIZE[dtype]
        header[f"t{k}.weight"] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + count]}
        data += rng.randbytes(count)
    if rng.random() < 0.3:
        header["__metadata__"] = {"format": "pt"}
    return header, data


def safetensors_bytes(text: bytes, data: bytes, length: int | None = None) -> bytes:
    return struct.pack("<Q", len(text) if length is None else length) + text + data


def _st_mutate_json(rng: random.Random, header: dict) -> bytes:
    """A header with one field (or the whole entry, or the whole header) made wrong."""
    names = [n for n in header if n != "__metadata__"]
    name, choice = rng.choice(names), rng.random()
    if choice < 0.5:
        header[name][rng.choice(["dtype", "shape", "data_offsets"])] = rng.choice(WEIRD)
    elif choice < 0.6:
        del header[name][rng.choice(["dtype", "shape", "data_offsets"])]
    elif choice < 0.7:
        header[name] = rng.choice(WEIRD)
    elif choice < 0.8:
        header[name]["data_offsets"] = sorted(rng.randint(0, 40) for _ in range(2))  # overlaps, gaps
    elif choice < 0.85:
        header = rng.choice(WEIRD)
    elif choice < 0.9:  # the same key twice: only the raw text can say it
        text = json.dumps(header)
        return text.replace("{", "{" + json.dumps(name) + ": " + json.dumps(header[name]) + ", ", 1).encode()
    else:
        header[name]["shape"] = [rng.choice([0, 1, 2, 2**40, 2**64, -2]) for _ in range(rng.randint(0, 6))]
    return json.dumps(header).encode()


def _st_random(rng: random.Random) -> bytes:
    """Plausible-looking but unchecked: random dtypes, shapes and offsets over random data."""
    header = {}
    for k in range(rng.randint(0, 5)):
        offsets = [rng.randint(0, 64) for _ in range(rng.choice([2, 2, 2, 1, 3]))]
        header[rng.choice([f"t{k}", "t0", "\udcff", "é"])] = {
            "dtype": rng.choice(ST_DTYPES),
            "shape": [rng.randint(0, 4) for _ in range(rng.randint(0, 3))],
            "data_offsets": offsets,
        }
    text = json.dumps(header, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")
    return safetensors_bytes(text, rng.randbytes(rng.randint(0, 64)))


def safetensors_case(index: int) -> bytes:
    rng = random.Random(f"safetensors-{index}")
    header, data = _st_valid(rng)
    valid = safetensors_bytes(json.dumps(header).encode(), data)
    kind = rng.randrange(8)
    if kind == 0:
        return valid
    if kind == 1:
        return safetensors_bytes(_st_mutate_json(rng, header), data)
    if kind == 2:  # flipped bytes, mostly in the header
        raw = bytearray(valid)
        for _ in range(rng.randint(1, 4)):
            raw[rng.randrange(min(len(raw), 8 + len(json.dumps(header)) + 8))] ^= 1 << rng.randrange(8)
        return bytes(raw)
    if kind == 3:
        return valid[: rng.randrange(len(valid))]
    if kind == 4:  # a length prefix that lies
        text = json.dumps(header).encode()
        lies = [
            0,
            1,
            len(text) - 1,
            len(text) + 1,
            len(valid),
            len(text) + len(data),
            2**63,
            2**64 - 1,
            100_000_000,
            100_000_001,
        ]
        return safetensors_bytes(text, data, rng.choice(lies))
    if kind == 5:  # not UTF-8, nested too deep, or not JSON
        text = rng.choice([b"\xff\xfe{}", b"[" * 100_000, b'{"a": ' * 50_000, rng.randbytes(rng.randint(1, 32))])
        return safetensors_bytes(text, data)
    if kind == 6:
        return _st_random(rng)
    return rng.randbytes(rng.randint(0, 24))


def read_safetensors(path: Path) -> None:
    reader = SafetensorsReader.open_dir(path.parent)
    try:
        for name in reader.keys():
            reader.get(name)
    finally:
        reader.close()


def test_fuzz_safetensors_header(tmp_path):
    failures = run_cases(read_safetensors, safetensors_case, tmp_path / "model.safetensors")
    assert not failures, _report(failures)


# --- GGUF -----------------------------------------------------------------------------------

# GGUF value types (the spec's gguf_metadata_value_type) and their struct codes.
U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
_SCALAR = {U8: "B", I8: "b", U16: "H", I16: "h", U32: "I", I32: "i", F32: "f", BOOL: "?", U64: "Q", I64: "q", F64: "d"}
# ggml tensor types used here: F32, F16, Q8_0 (blocks of 32 values in 34 bytes).
GF32, GF16, GQ8_0 = 0, 1, 8


def _g_str(text: str | bytes, length: int | None = None) -> bytes:
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    return struct.pack("<Q", len(raw) if length is None else length) + raw


def _g_value(vtype: int, value, length: int | None = None) -> bytes:
    if vtype == STRING:
        return _g_str(value, length)
    if vtype == ARRAY:
        etype, items = value
        body = b"".join(_g_value(etype, item) for item in items)
        return struct.pack("<IQ", etype, len(items) if length is None else length) + body
    if vtype in _SCALAR:
        code = _SCALAR[vtype]
        return struct.pack("<" + code, value if code != "?" else bool(value))
    return b""  # an unknown type: no payload


def gguf_bytes(kvs: list, tensors: list, data: bytes, counts: tuple | None = None, version: int = 3) -> bytes:
    """kvs: (key, vtype, value[, lying length]); tensors: (name, dims, ggml type, offset)."""
    out = struct.pack("<4sIQQ", b"GGUF", version, *(counts or (len(tensors), len(kvs))))
    for key, vtype, value, *length in kvs:
        out += _g_str(key) + struct.pack("<I", vtype) + _g_value(vtype, value, *length)
    for name, dims, ttype, offset in tensors:
        out += _g_str(name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, ttype, offset)
    return out + b"\0" * (-len(out) % 32) + data


def gguf_parts(rng: random.Random | None = None) -> tuple[list, list, bytes]:
    """A valid pico llama GGUF as (kvs, tensors, data); ``rng`` picks a variant, None the full file."""
    kvs = [
        ("general.architecture", STRING, "llama"),
        ("llama.block_count", U32, 1),
        ("llama.attention.head_count", U32, 2),
        ("llama.attention.head_count_kv", U32, 1),
        ("general.name", STRING, "pico"),
        ("tokenizer.ggml.tokens", ARRAY, (STRING, ["a", "b", "c", "d"])),
        ("tokenizer.ggml.scores", ARRAY, (F32, [0.0, -1.0, -2.0, -3.0])),
        ("tokenizer.ggml.bos_token_id", U32, 1),
        ("tokenizer.ggml.eos_token_id", U32, 2),
    ]
    layout = [
        ("token_embd.weight", (8, 4), GF32, 128),
        ("blk.0.attn_q.weight", (8, 8), GF32, 256),
        ("blk.0.attn_k.weight", (8, 4), GF16, 64),
        ("output_norm.weight", (8,), GF32, 32),
        ("blk.0.ffn_down.weight", (32, 2), GQ8_0, 68),
    ]
    if rng is not None:
        if rng.random() < 0.3:
            kvs.append(("general.alignment", U32, 32))
        layout = layout[: rng.randint(1, len(layout))]
    rng = rng or random.Random(0)
    tensors, data = [], b""
    for name, dims, ttype, nbytes in layout:
        tensors.append((name, dims, ttype, len(data)))
        # Finite floats where the type is plain: the tensor data is not what is fuzzed here.
        code, size = {GF32: ("f", 4), GF16: ("e", 2)}.get(ttype, (None, 1))
        block = (
            struct.pack(f"<{nbytes // size}{code}", *(rng.uniform(-1, 1) for _ in range(nbytes // size)))
            if code
            else rng.randbytes(nbytes)
        )
        data += block + b"\0" * (-nbytes % 32)
    return kvs, tensors, data


def _fit(vtype: int, value):
    """``value`` if it can be written as ``vtype``, else one that can (the type is the lie)."""
    if vtype == STRING:
        return value if isinstance(value, str) else "x"
    if vtype == ARRAY:
        return value if isinstance(value, tuple) else (U8, [1, 2])
    if vtype in (F32, F64):
        return 1.5
    return 1 if vtype in _SCALAR else value


def _g_mutate(rng: random.Random, kvs: list, tensors: list) -> tuple:
    """One structural lie: a wrong type, length, count, dimension, offset or name."""
    choice, counts = rng.randrange(9), None
    if choice == 0 and kvs:  # a value's type changed: the payload no longer fits it
        i = rng.randrange(len(kvs))
        kvs[i] = (kvs[i][0], rng.choice([*range(13), 13, 99, 2**31]), kvs[i][2])
        kvs[i] = (*kvs[i][:2], _fit(kvs[i][1], kvs[i][2]))
    elif choice == 1 and kvs:  # a string or array length that lies
        i = rng.randrange(len(kvs))
        kvs[i] = (*kvs[i][:3], rng.choice(INTERESTING_U64)) if kvs[i][1] in (STRING, ARRAY) else kvs[i]
    elif choice == 2:
        counts = (rng.choice([len(tensors), *INTERESTING_U64]), rng.choice([len(kvs), *INTERESTING_U64]))
    elif choice == 3 and tensors:
        i = rng.randrange(len(tensors))
        dims = tuple(rng.choice([0, 1, 3, 32, 2**32, 2**63, 2**64 - 1]) for _ in range(rng.randint(0, 6)))
        tensors[i] = (tensors[i][0], dims, *tensors[i][2:])
    elif choice == 4 and tensors:
        i = rng.randrange(len(tensors))
        tensors[i] = (*tensors[i][:2], rng.choice([*range(42), 99, 2**32 - 1]), tensors[i][3])
    elif choice == 5 and tensors:
        i = rng.randrange(len(tensors))
        tensors[i] = (*tensors[i][:3], rng.choice([1, 31, 4096, 2**40, 2**64 - 1]))
    elif choice == 6:  # duplicates, bad UTF-8, nested arrays, an alignment that is no power of two
        kvs.append(
            rng.choice(
                [
                    kvs[0] if kvs else ("a", U8, 1),
                    ("general.name\udcff", STRING, b"\xff"),
                    ("tokenizer.ggml.bos_token_id", ARRAY, (ARRAY, [(U8, [1])])),
                    ("general.alignment", U32, rng.choice([0, 3, 64])),
                    ("general.alignment", U64, 32),
                    ("general.alignment", STRING, "32"),
                ]
            )
        )
    elif choice == 7 and kvs:  # architecture, block or head count well-formed but wrong: huge, zero, a list
        i = rng.randrange(min(len(kvs), 4))
        kvs[i] = (
            kvs[i][0],
            *rng.choice(
                [
                    (U32, 0),
                    (U32, 2**32 - 1),
                    (U64, 2**63),
                    (I32, -1),
                    (BOOL, 1),
                    (STRING, "llama"),
                    (ARRAY, (STRING, ["llama"])),
                ]
            ),
        )
    elif tensors:
        tensors.append(rng.choice([tensors[0], ("blk.0.attn_q.weight\udcff", (8,), GF32, 0), ("bogus", (1,), GF32, 0)]))
    return counts


def _g_random(rng: random.Random) -> bytes:
    """Well-formed values of random types under random keys, random tensors, random data."""
    values = {
        STRING: lambda: "s" * rng.randint(0, 5),
        BOOL: lambda: rng.randint(0, 1),
        ARRAY: lambda: rng.choice([(U8, [1] * rng.randint(0, 3)), (STRING, ["t"] * rng.randint(0, 3))]),
    }
    kvs = []
    for k in range(rng.randint(0, 6)):
        vtype = rng.choice([*_SCALAR, STRING, ARRAY])
        value = values.get(vtype, lambda: rng.randint(0, 100))()
        kvs.append((rng.choice(["general.architecture", f"k{k}", "llama.block_count"]), vtype, value))
    tensors = [
        (
            rng.choice(["token_embd.weight", f"t{k}", "output.weight"]),
            tuple(rng.randint(0, 9) for _ in range(rng.randint(0, 4))),
            rng.choice([GF32, GF16, GQ8_0, 2, 30]),
            rng.choice([0, 32, 64]),
        )
        for k in range(rng.randint(0, 3))
    ]
    return gguf_bytes(kvs, tensors, rng.randbytes(rng.randint(0, 96)), version=rng.choice([3, 3, 2, 1, 4]))


def gguf_case(index: int) -> bytes:
    rng = random.Random(f"gguf-{index}")
    kvs, tensors, data = gguf_parts(rng)
    kind = rng.randrange(7)
    if kind == 0:
        return gguf_bytes(kvs, tensors, data)
    if kind == 1:
        counts = _g_mutate(rng, kvs, tensors)
        return gguf_bytes(kvs, tensors, data, counts)
    raw = bytearray(gguf_bytes(kvs, tensors, data))
    header_end = len(raw) - len(data)
    if kind == 2:
        for _ in range(rng.randint(1, 4)):
            raw[rng.randrange(header_end)] ^= 1 << rng.randrange(8)
        return bytes(raw)
    if kind == 3:
        return bytes(raw[: rng.randrange(len(raw))])
    if kind == 4:  # a count, length or type field overwritten in place
        at = rng.randrange(24, header_end - 8) if rng.random() < 0.7 else rng.choice([8, 16])
        width = rng.choice([4, 8])
        raw[at : at + width] = (rng.choice(INTERESTING_U64) % 2 ** (8 * width)).to_bytes(width, "little")
        return bytes(raw)
    if kind == 5:
        return _g_random(rng)
    return b"GGUF" + rng.randbytes(rng.randint(0, 40)) if rng.random() < 0.5 else rng.randbytes(rng.randint(0, 24))


def read_gguf(path: Path) -> None:
    from mergesmith.io.gguf import GGUFTensorReader, gguf_generation_config

    reader = GGUFTensorReader(path)
    try:
        for name in reader.keys():
            reader.get(name)
    finally:
        reader.close()
    gguf_generation_config(path)


def test_fuzz_gguf_metadata(tmp_path):
    pytest.importorskip("gguf")
    failures = run_cases(read_gguf, gguf_case, tmp_path / "model.gguf")
    assert not failures, _report(failures)


def test_fuzz_cases_include_valid_files(tmp_path):
    """The fuzzers start from files that read: otherwise every case would 'pass' by failing."""
    pytest.importorskip("gguf")
    for index, (make, read, name) in enumerate(
        [(safetensors_case, read_safetensors, "model.safetensors"), (gguf_case, read_gguf, "model.gguf")]
    ):
        folder = tmp_path / str(index)
        folder.mkdir()
        reads = 0
        for case in range(200):
            (folder / name).unlink(missing_ok=True)
            (folder / name).write_bytes(make(case))
            try:
                read(folder / name)
                reads += 1
            except MergesmithError:
                pass
        assert reads >= 20, f"{name}: only {reads} of 200 cases read"


def test_harness_reports_foreign_errors_hangs_and_big_allocations(tmp_path, monkeypatch):
    """The checks above can fail: each defect they look for, planted, is reported."""
    monkeypatch.setattr(sys.modules[__name__], "CASE_SECONDS", 0.2)

    def defective(path: Path) -> None:
        kind = path.read_bytes()[0] % 4
        if kind == 1:
            raise ValueError("not ours")
        if kind == 2:
            while True:
                pass
        if kind == 3:
            bytearray(8 << 20)

    failures = run_cases(defective, lambda i: bytes([i]), tmp_path / "f", n_cases=8)
    assert {kind: count for kind, (count, _, _) in failures.items()} == {"ValueError": 2, "hang": 2, "allocation": 2}
