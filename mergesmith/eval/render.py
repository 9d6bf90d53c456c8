"""What ``mergesmith eval`` prints: blocks that fit a terminal of ``WIDTH`` columns, best model first.

    ranking     every model's full name, its type (dtype, or the GGUF file type), the ranking key, seconds
    per text    perplexity, bits per byte; with a reference: mean and p99 KL, top-1 agreement, Δ perplexity
    tasks       accuracy (length-normalized accuracy) per task, as many tasks per block as fit
    lm-eval     each metric, as many per block as fit

Rows are labelled by rank and the model's folder or file name; the ranking block gives the full
names. Every number, at full precision, is in ``--json`` (and the card).
"""

from __future__ import annotations

import struct
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

from mergesmith.eval.results import EvalResult, ModelScore

WIDTH = 100
LABEL = 24  # at most this many characters of a model's name label its rows
GAP = "  "

Column = tuple[str, Sequence[str]]  # header, one cell per row


def _ellipsis(text: str, width: int) -> str:
    """``text`` in ``width`` characters, keeping its end (a path's distinguishing part)."""
    return text if len(text) <= width else "…" + text[len(text) - width + 1 :]


def _label(rank: int, score: ModelScore) -> str:
    name = _ellipsis(Path(score.model).name or score.model, LABEL)
    return f"#{rank} {name}" + (" (ref)" if score.is_ref else "")


def _table(head: str, labels: Sequence[str], columns: Sequence[Column], width: int) -> list[str]:
    """A header row and one row per label; the columns split into as many tables as ``width`` needs."""
    left = max(len(head), *map(len, labels))
    room = width - left - len(GAP)
    columns = [(_ellipsis(h, room), cells) for h, cells in columns]
    chunks: list[list[Column]] = [[]]
    used = left
    for column in columns:
        w = max(len(column[0]), *map(len, column[1]))
        if chunks[-1] and used + len(GAP) + w > width:
            chunks.append([])
            used = left
        chunks[-1].append(column)
        used += len(GAP) + w
    lines: list[str] = []
    for chunk in chunks:
        widths = [max(len(h), *map(len, cells)) for h, cells in chunk]
        rows = [[head] + [h for h, _ in chunk]] + [
            [label] + [cells[i] for _, cells in chunk] for i, label in enumerate(labels)
        ]
        lines += [
            GAP.join([row[0].ljust(left)] + [c.rjust(w) for c, w in zip(row[1:], widths)]).rstrip() for row in rows
        ]
        lines.append("")
    return lines[:-1]


def _ranking(ranked: Sequence[ModelScore], result: EvalResult, types: Mapping[str, str], width: int) -> list[str]:
    by_text = bool(result.models[0].texts)
    # rank_key: mean bits per byte, or minus the mean accuracy (+ 0.0: no "-0.0000")
    key = [f"{(s.rank_key()[0] if by_text else -s.rank_key()[0]) + 0.0:.4f}" for s in ranked]
    columns = [
        ("type", [types.get(s.model) or _type(s.model, result.dtype) for s in ranked]),
        ("mean bpb" if by_text else "mean acc", key),
        ("seconds", [f"{s.seconds:.1f}" for s in ranked]),
    ]
    others = sum(len(GAP) + max(len(h), *map(len, c)) for h, c in columns)
    names = [
        f"#{i} " + _ellipsis(s.model, width - others - 4 - len(str(i)) - 6 * s.is_ref) + " (ref)" * s.is_ref
        for i, s in enumerate(ranked, 1)
    ]
    return _table("model", names, columns, width)


def _type(model: str, dtype: str) -> str:
    """What a row was scored in: the dtype asked for, except a GGUF file, which keeps its own types."""
    return "gguf" if Path(model).suffix == ".gguf" else dtype


def _text_blocks(ranked: Sequence[ModelScore], labels: list[str], has_ref: bool, width: int) -> list[str]:
    lines: list[str] = []
    for i, text in enumerate(ranked[0].texts):
        rows = [s.texts[i] for s in ranked]
        columns: list[Column] = [
            ("ppl", [f"{t.ppl:.3f}" for t in rows]),
            ("bpb", [f"{t.bits_per_byte:.4f}" for t in rows]),
        ]
        if has_ref:
            kl = [t.kl for t in rows]
            columns += [
                (head, ["-" if k is None else cell(k) for k in kl])
                for head, cell in (
                    ("KL mean", lambda k: f"{k.mean:.3g}"),
                    ("KL p99", lambda k: f"{k.p99:.3g}"),
                    ("top-1", lambda k: f"{k.top1:.4f}"),
                    ("Δppl", lambda k: f"{k.delta_ppl:+.3f}"),
                )
            ]
        title = f"text {text.text}: perplexity, bits per byte" + (", KL(ref ‖ model) per token" if has_ref else "")
        lines += ["", _ellipsis(title, width)] + _table("model", labels, columns, width)
    return lines


def _task_block(ranked: Sequence[ModelScore], labels: list[str], width: int) -> list[str]:
    if not ranked[0].tasks:
        return []
    columns = [
        (task.task, [f"{s.tasks[i].acc:.3f} ({s.tasks[i].acc_norm:.3f})" for s in ranked])
        for i, task in enumerate(ranked[0].tasks)
    ]
    return ["", "multiple choice: accuracy (length-normalized accuracy)"] + _table("model", labels, columns, width)


def _lm_eval_block(ranked: Sequence[ModelScore], labels: list[str], width: int) -> list[str]:
    if not ranked[0].lm_eval:
        return []
    columns = [
        (m.name.removeprefix("lm-eval:"), [f"{s.lm_eval[i].value:.3f}" for s in ranked])
        for i, m in enumerate(ranked[0].lm_eval)
    ]
    return ["", "lm-eval"] + _table("model", labels, columns, width)


def render_table(result: EvalResult, *, types: Mapping[str, str] | None = None, width: int = WIDTH) -> str:
    """The ranking, then a block per text, the tasks and lm-eval's metrics; no line longer than ``width``.

    ``types``: what each model was scored in where it is not ``result.dtype`` (``gguf_types``).
    """
    ranked = result.ranked()
    labels = [_label(i, s) for i, s in enumerate(ranked, 1)]
    lines = _ranking(ranked, result, types or {}, width)
    lines += _text_blocks(ranked, labels, result.ref is not None, width)
    lines += _task_block(ranked, labels, width) + _lm_eval_block(ranked, labels, width)
    key = "mean bits per byte over texts" if result.models[0].texts else "mean accuracy over tasks"
    footer = (
        f"# ranked by {key}; context {result.context}, stride {result.stride}"
        + (f", first {result.limit} windows per text / items per task" if result.limit else "")
        + f"; {result.date}; every number: --json"
    )
    return "\n".join(lines + [""] + textwrap.wrap(footer, width, subsequent_indent="# "))


# --- GGUF file types ----------------------------------------------------------------------------


def gguf_types(models: Sequence[str]) -> dict[str, str]:
    """The file type (``Q4_1``, ``F16``) of each ``.gguf`` model, for the ranking's type column."""
    return {m: gguf_file_type(m) for m in models if Path(m).suffix == ".gguf"}


def gguf_file_type(path) -> str:
    """``general.file_type`` of a GGUF file as llama.cpp names it (``Q4_1``); "gguf" when it does not say.

    Only the metadata before that key is read (llama.cpp writes it among the first keys).
    """
    try:
        import gguf
    except ImportError:  # the eval of a .gguf needs the llama extra, which brings gguf; be safe anyway
        return "gguf"
    try:
        with open(path, "rb") as f:
            value = _metadata_value(f, gguf.Keys.General.FILE_TYPE, gguf)
        name = gguf.LlamaFileType(value).name
    except (OSError, ValueError, struct.error):  # unreadable, damaged, or a type this gguf does not know
        return "gguf"
    return name.split("_", 1)[1] if "_" in name else "gguf"  # MOSTLY_Q4_1 → Q4_1, ALL_F32 → F32


def _scalar_formats(gguf) -> dict:
    """struct formats of GGUF's fixed-size value types (little-endian, as llama.cpp writes them)."""
    t = gguf.GGUFValueType
    return {
        t.UINT8: "<B",
        t.INT8: "<b",
        t.UINT16: "<H",
        t.INT16: "<h",
        t.UINT32: "<I",
        t.INT32: "<i",
        t.FLOAT32: "<f",
        t.BOOL: "<?",
        t.UINT64: "<Q",
        t.INT64: "<q",
        t.FLOAT64: "<d",
    }


def _metadata_value(f, key: str, gguf):
    """The integer value of ``key`` in the metadata of the open GGUF file ``f``."""
    scalars = _scalar_formats(gguf)

    def read(fmt: str):
        return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]

    def read_name() -> bytes:
        size = read("<Q")
        if size > 1 << 16:
            raise ValueError(f"a metadata key of {size} bytes: the file is damaged")
        return f.read(size)

    def skip(kind: int) -> None:
        if kind in scalars:
            f.seek(struct.calcsize(scalars[kind]), 1)
        elif kind == gguf.GGUFValueType.STRING:
            f.seek(read("<Q"), 1)
        elif kind == gguf.GGUFValueType.ARRAY:
            item, count = read("<I"), read("<Q")
            if item in scalars:
                f.seek(count * struct.calcsize(scalars[item]), 1)
            else:
                for _ in range(count):
                    skip(item)
        else:
            raise ValueError(f"unknown GGUF value type {kind}")

    if read("<I") != gguf.GGUF_MAGIC or read("<I") < 2:
        raise ValueError("not a GGUF file of version 2 or later")
    read("<Q")  # tensor count
    for _ in range(read("<Q")):
        name, kind = read_name(), read("<I")
        if name == key.encode() and kind in scalars:
            return int(read(scalars[kind]))
        skip(kind)
    raise ValueError(f"no {key}")
