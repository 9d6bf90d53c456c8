"""``export_gguf``: one Hugging Face model directory → GGUF files, one per requested type.

    float types (f32, f16, bf16):  llama.cpp's converter, straight from the safetensors
    quantized types:               llama.cpp's quantizer, from the F16 file

Quantizing from F16 rather than from the original float32 is what llama-quantize users do, and
costs nothing measurable: F16 keeps 11 significant bits, every quant type here keeps at most 8.
Each file is written under a hidden ``.NAME.partial-PID`` name and renamed when complete, so a
file with the final name is always whole; the PID lets the next run in the folder remove what a
killed run left (with a warning) and refuse to write beside a live one; a failed run takes back
the files it added. Everything is checked (architecture, weights, types, converter, existing files,
llama-cpp-python) before the first file is started.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mergesmith.errors import OutputExistsError
from mergesmith.eval.llama_cpp import import_llama_cpp
from mergesmith.gguf.convert import (
    check_architecture,
    check_weights,
    convert_to_gguf,
    count_tensors,
)
from mergesmith.gguf.converter import ensure_converter
from mergesmith.gguf.quantize import quantize_gguf
from mergesmith.gguf.quants import BY_NAME, QUANT_TYPES, QuantType, parse_quants
from mergesmith.io.staging import clear_stale, parent_lock


@dataclass(frozen=True)
class GGUFFile:
    quant: str  # q4_k_m
    path: Path
    bytes: int  # file size
    bits_per_weight: float  # tensor bytes * 8 / tensor elements, as llama.cpp reports BPW
    seconds: float  # time to write it (conversion or quantization alone)


@dataclass(frozen=True)
class ExportResult:
    model: Path
    out_dir: Path
    files: tuple[GGUFFile, ...]

    def file(self, quant: str) -> GGUFFile | None:
        return next((f for f in self.files if f.quant == quant), None)


def gguf_name(model_dir: Path, quant: QuantType) -> str:
    """``<model folder>-<TYPE>.gguf``, the naming of published GGUF repositories."""
    return f"{Path(model_dir).resolve().name}-{quant.name.upper()}.gguf"


def bits_per_weight(path: Path) -> float:
    import gguf

    reader = gguf.GGUFReader(str(path))
    nbytes = sum(int(t.n_bytes) for t in reader.tensors)
    elements = sum(int(t.n_elements) for t in reader.tensors)
    return nbytes * 8 / elements


def _partial(path: Path) -> Path:
    return path.with_name(f".{path.name}.partial-{os.getpid()}")


# No rate and no ETA: the converter names every tensor within seconds and then writes the whole
# file unseen, and the quantizer's tensors differ in size by 100x (the embedding), so a rate
# computed over tensors predicts nothing.
_BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} tensors [{elapsed}]"


@contextmanager
def _bar(progress: bool, desc: str, total: int | None):
    from tqdm import tqdm

    with tqdm(
        total=total, desc=desc, unit="tensor", disable=not progress, leave=progress, bar_format=_BAR_FORMAT
    ) as bar:
        yield bar


def _produce(model_dir: Path, staged: Path, quant: QuantType, source: Path | None, opts: dict, label: str) -> None:
    """Write ``staged`` as ``quant``: the converter for float types, the quantizer from ``source`` for the rest.

    The bar is named by ``label`` (the final file's name, never the hidden staging name) and counts
    what each tool reports: tensors prepared, then the file written (converter); tensors quantized.
    """
    if quant.tool == "convert":
        with _bar(opts["progress"], f"{label}: preparing", opts["tensors"]) as bar:

            def on_prepared(_name: str) -> None:
                bar.total = max(bar.total or 0, bar.n + 1)  # llama.cpp may add a tensor (rope_freqs)
                bar.update()
                if bar.n == opts["tensors"]:
                    bar.set_description_str(f"{label}: writing")  # the converter writes the file only now

            convert_to_gguf(model_dir, staged, quant.name, converter=opts["converter"], on_tensor=on_prepared)
            bar.total = bar.n  # or left one out (a tied head): the file is whole now
        return
    with _bar(opts["progress"], f"{label}: quantizing", None) as bar:
        started = []  # the quantizer names each tensor as it starts: the one before is done

        def on_started(name: str, total: int) -> None:
            bar.total = total
            if started:
                bar.update()
            started.append(name)

        quantize_gguf(source, staged, quant, threads=opts["threads"], on_tensor=on_started)
        bar.update(len(started) - bar.n)


def _write(model_dir: Path, path: Path, quant: QuantType, source: Path | None, opts: dict) -> GGUFFile:
    start, staged = time.perf_counter(), _partial(path)
    try:
        _produce(model_dir, staged, quant, source, opts, path.name)
        os.replace(staged, path)
    finally:  # BaseException too: Ctrl-C leaves no partial file
        staged.unlink(missing_ok=True)
    seconds = time.perf_counter() - start
    return GGUFFile(quant.name, path, path.stat().st_size, bits_per_weight(path), seconds)


def _check_outputs(out_dir: Path, paths: Sequence[Path], force: bool) -> None:
    if (out_dir.exists() or out_dir.is_symlink()) and not out_dir.is_dir():
        raise OutputExistsError(
            f"{out_dir} exists and is not a folder; remove it or choose another output folder for the .gguf files"
        )
    existing = [p for p in paths if p.exists()]
    if existing and not force:
        names = ", ".join(str(p) for p in existing)
        raise OutputExistsError(
            f"{names} already exist{'s' if len(existing) == 1 else ''}; set force (--force) to replace, or choose another output folder"
        )
    directories = [p for p in existing if p.is_dir()]
    if directories:
        raise OutputExistsError(
            f"{directories[0]} is a directory, not a GGUF file; move it aside or choose another output folder"
        )


def _claim(model_dir: Path, out_dir: Path, paths: Sequence[Path], force: bool) -> None:
    """Check the targets, then clear what killed runs left in the folder for this model (partial
    files of every type: any may have been a target or the F16 scratch input), under the folder's
    lock, so that of two exports into one folder the second sees the first's partial files and stops."""
    _check_outputs(out_dir, paths, force)
    with parent_lock(paths[0].absolute()):
        for quant in QUANT_TYPES:
            clear_stale((out_dir / gguf_name(model_dir, quant)).absolute())


def export_gguf(
    model_dir: str | Path,
    out_dir: str | Path,
    quants: str | Sequence[QuantType],
    *,
    force: bool = False,
    converter: Path | None = None,
    threads: int | None = None,
    progress: bool = False,
) -> ExportResult:
    """Write ``out_dir/<model>-<TYPE>.gguf`` for each of ``quants`` (``"f16,q4_k_m"`` or QuantTypes)."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    wanted = parse_quants(quants) if isinstance(quants, str) else tuple(quants)
    check_architecture(model_dir)
    check_weights(model_dir)
    converter = ensure_converter(converter)
    if any(q.tool == "quantize" for q in wanted):
        import_llama_cpp()
    targets = {q.name: out_dir / gguf_name(model_dir, q) for q in wanted}
    f16_path = out_dir / gguf_name(model_dir, BY_NAME["f16"])
    created, new = not out_dir.exists(), [p for p in targets.values() if not p.exists()]
    _claim(model_dir, out_dir, list(targets.values()), force)
    opts = {"progress": progress, "converter": converter, "threads": threads, "tensors": count_tensors(model_dir)}
    try:
        files = _write_all(model_dir, wanted, targets, f16_path, opts)
    except BaseException:
        # All or nothing: the files this run added go again (replaced ones cannot come back), and
        # so does a folder it created.
        for path in new:
            path.unlink(missing_ok=True)
        if created:
            with contextlib.suppress(OSError):
                out_dir.rmdir()
        raise
    return ExportResult(model_dir, out_dir, tuple(files[q.name] for q in wanted))


def _write_all(model_dir: Path, wanted, targets: dict, f16_path: Path, opts: dict) -> dict[str, GGUFFile]:
    files = {q.name: _write(model_dir, targets[q.name], q, None, opts) for q in wanted if q.tool == "convert"}
    quantized = [q for q in wanted if q.tool == "quantize"]
    source = files["f16"].path if "f16" in files else None
    scratch = None
    try:
        if quantized and source is None:
            # F16 only as the quantizer's input: staged under the F16 file's partial name (so a
            # killed run's scratch is cleared like any partial file), used, removed.
            scratch = source = _partial(f16_path)
            _produce(
                model_dir, scratch, BY_NAME["f16"], None, opts, f"{f16_path.name} (temporary, the quantizer's input)"
            )
        for q in quantized:
            files[q.name] = _write(model_dir, targets[q.name], q, source, opts)
    finally:
        if scratch is not None:
            scratch.unlink(missing_ok=True)
    return files
