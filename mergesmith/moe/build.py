"""``build_moe(config, out)``: a MoE model from dense fine-tunes, streamed and written atomically.

Headers first (every check before a weight is read or a Hub file downloaded), then the inputs are
opened; in the staging directory the tokenizer is copied (the prompts are tokenized with it), and
every tensor but the routers is copied from its input to its place in the shards, range by range
from a few threads, while another thread computes the routers (the hidden-state pass holds one
layer of the base).
"""

from __future__ import annotations

import functools
import json
import math
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mergesmith.config.references import parse_reference
from mergesmith.io.blockfile import AlignedBuffer
from mergesmith.io.resolve import close_models, local_paths, open_headers, open_models
from mergesmith.io.writer import ShardedWriter, TensorSlot, parse_size
from mergesmith.moe import router_proc
from mergesmith.moe.card import moe_card
from mergesmith.moe.config import MoeSource, read_moe
from mergesmith.moe.layout import Copy, MoePlan, Router, plan_moe
from mergesmith.output.directory import check_not_input, check_target, staged_directory
from mergesmith.output.tokenizer import (
    check_tokenizer_files,
    copy_generation_config,
    copy_tokenizer,
    resolve_chat_template,
    write_chat_template,
)

CONFIG_COPY = "mergesmith_moe_config.yml"
# Threads copying tensors: the disk takes a few direct writes in flight faster than one at a time.
COPIERS = 4
CHUNK = 8 << 20  # bytes per read and direct write of a copied tensor


def _source(config) -> MoeSource:
    return config if isinstance(config, MoeSource) else read_moe(config)


def plan_file(config, *, allow_pickle: bool = False) -> MoePlan:
    """What ``build_moe`` would write; reads headers and configs only."""
    src = _source(config)
    headers = open_headers(src.config.referenced_models(), base_dir=src.base_dir, allow_pickle=allow_pickle)
    return plan_moe(src.config, headers, src.name)


def build_moe(
    config,
    out: str | Path,
    *,
    force: bool = False,
    seed: int = 0,
    device: str = "cpu",
    shard_size: str = "5GB",
    allow_pickle: bool = False,
    lora_cache: Path | None = None,
    progress: bool = False,
    status: Callable[[str], None] | None = None,
    router_child: bool | None = None,
) -> MoePlan:
    """Build the MoE of ``config`` (a path or a read MoeSource) into ``out``. ``router_child``:
    compute the routers in a child process (None: where that is quicker, see router_proc.py)."""
    say = status or (lambda _message: None)
    src, out = _source(config), Path(out)
    if device != "cpu":  # the check imports torch, which the copies can do without (see _write)
        from mergesmith.execute.device import check_device

        device = check_device(device)
    keys = src.config.referenced_models()
    inputs = [(f"model '{k}'", p) for k in keys for p in local_paths(k, src.base_dir)] + [
        ("the config", Path(src.name))
    ]
    check_not_input(out, inputs)
    check_target(out, force)
    size = parse_size(shard_size)
    opts = dict(seed=seed, device=device, size=size, allow_pickle=allow_pickle, child=None)
    if router_proc.eligible(src, router_child):  # first: its imports then overlap all of the work below
        opts["child"] = router_proc.RouterProcess(dict(src=src, seed=seed, device=device, allow_pickle=allow_pickle))
    try:
        return _build(src, out, force, lora_cache, opts, progress, say)
    finally:
        if opts["child"] is not None:
            opts["child"].close()


def _build(src: MoeSource, out: Path, force: bool, lora_cache, opts: dict, progress, say) -> MoePlan:
    keys, allow_pickle = src.config.referenced_models(), opts["allow_pickle"]
    say("reading metadata and planning")
    headers = open_headers(keys, base_dir=src.base_dir, allow_pickle=allow_pickle)
    check_not_input(out, [(f"model '{k}'", h.path) for k, h in headers.items()])
    plan = plan_moe(src.config, headers, src.name)
    check_tokenizer_files(headers[plan.tokenizer_donor])
    template = src.config.chat_template and resolve_chat_template(src.config.chat_template, headers, src.name)
    adapters = any(parse_reference(k).lora is not None for k in keys)
    say("opening the inputs and folding adapters" if adapters else "opening the inputs")
    cache = Path(lora_cache).expanduser() if lora_cache is not None else None  # "~/..." as the CLI's default
    models = open_models(keys, base_dir=src.base_dir, allow_pickle=allow_pickle, lora_cache=cache)
    try:
        with staged_directory(out, force) as staging:
            _write(plan, models, src, staging, out.name, template, opts, progress, say)
    finally:
        close_models(models)
    return plan


def _write(plan: MoePlan, models, src: MoeSource, staging: Path, name: str, template, opts, progress, say) -> None:
    copy_tokenizer(models[plan.tokenizer_donor], staging)
    copy_generation_config(models[plan.config.base_model], staging)
    if template:
        write_chat_template(template, staging)
    # The routers (imports, then a forward pass: CPU) are computed in a child process or a
    # thread (router_proc.py) while the other tensors are copied (reading and writing: mostly
    # waiting on the disk, and no torch needed for bytes copied as they are), then written.
    say(f"copying tensors; computing the routers ({plan.config.gate_mode}) meanwhile")
    copied = threading.Event()

    def here() -> dict:
        return _routers_beside_copies(copied, plan, models, staging, seed=opts["seed"], device=opts["device"])

    child = opts["child"]
    with ThreadPoolExecutor(1) as pool, _bar(progress, len(plan.tensors), "tensors") as tick:
        if child is not None:
            routers = functools.partial(child.result, here)
            copies_done = lambda: (copied.set(), child.copies_done())  # noqa: E731
        else:
            routers, copies_done = pool.submit(here).result, copied.set
        _copy_all(plan, models, routers, staging, opts["size"], opts["seed"], tick, copies_done)
    (staging / "config.json").write_text(json.dumps(plan.out_config, indent=2) + "\n")
    (staging / CONFIG_COPY).write_text(src.text)
    (staging / "README.md").write_text(moe_card(plan, src.text, name, base_dir=src.base_dir))


def _routers_beside_copies(copied: threading.Event, *args, **kwargs):
    """``router_tensors`` (imported here: torch and transformers load in this thread while the
    copies run) with one core left to the copying threads until ``copied`` is set, every core
    after (torch's thread count is a per-thread setting, adjusted before each layer of a hidden
    pass). Asking for every core while the copies ran beside it cost more than it gave: on 2
    busy cores the 1.1B hidden pass took 2.5 s on one thread and 6 s on two (threads waiting on
    each other's preempted work); once the copies are done the second core is idle."""
    from mergesmith.moe.gates import router_tensors

    return router_tensors(*args, progress=router_proc.paced(copied.is_set), **kwargs)


class _bar:
    """A tqdm bar's update as a no-argument callable, or nothing when progress is off."""

    def __init__(self, on: bool, total: int, desc: str):
        self.bar = None
        if on:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="tensor", desc=desc)

    def __enter__(self):
        return (lambda: self.bar.update(1)) if self.bar is not None else (lambda: None)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()


def _copy_all(
    plan: MoePlan, models, routers: Callable[[], dict], staging: Path, size: int, seed: int, tick, copies_done
) -> None:
    """Every copied tensor (COPIERS threads), ``copies_done()``, then every router (``routers()``
    waits for them: tensors, or bytes in the output dtype from the child process), each into its
    slot."""
    from mergesmith._torch import torch

    # Slots by dtype name: laying out and copying bytes as read needs no torch (see _copy_bytes).
    writer = ShardedWriter(staging, [TensorSlot(t.name, t.shape, plan.out_dtype) for t in plan.tensors], size)
    buffers = threading.local()

    def put(tensor) -> None:
        if _plain(plan, models, tensor):
            _copy_bytes(writer, models[tensor.source.model].reader, tensor, buffers)
        elif isinstance(tensor.source, Copy):
            value = expert_tensor(plan, models, tensor, seed)
            writer.write(tensor.name, value.to(getattr(torch, plan.out_dtype)).contiguous())
        else:  # Zeros: q/k/v biases of llama/mistral experts in a Qwen2-MoE
            writer.write(tensor.name, torch.zeros(tensor.shape, dtype=getattr(torch, plan.out_dtype)))
        tick()

    try:
        with ThreadPoolExecutor(COPIERS) as pool:
            for done in [pool.submit(put, t) for t in plan.tensors if not isinstance(t.source, Router)]:
                done.result()
        copies_done()
        computed = routers()
        for tensor in plan.tensors:
            if isinstance(tensor.source, Router):
                _put_router(writer, tensor.name, computed[tensor.name], plan.out_dtype)
                tick()
        writer.finish()
    except BaseException:
        writer.close()
        raise


def _put_router(writer: ShardedWriter, name: str, value, out_dtype: str) -> None:
    if isinstance(value, bytes):  # from the child: written without importing torch here
        view = AlignedBuffer(len(value)).at(writer.offset_of(name), len(value))
        view[:] = value
        writer.write_view(name, 0, view)
        writer.complete(name)
        return
    from mergesmith._torch import torch

    writer.write(name, value.to(getattr(torch, out_dtype)).contiguous())


def _plain(plan: MoePlan, models, tensor) -> bool:
    """A copy of the input's bytes as they are (same dtype, no noise, no scale), from a reader
    that reads bytes of its files."""
    source = tensor.source
    if not isinstance(source, Copy) or not hasattr(models[source.model].reader, "read_bytes"):
        return False
    if models[source.model].reader.info(source.tensor).dtype_name != plan.out_dtype:
        return False
    if source.expert is None:
        return True
    expert = plan.config.all_experts()[source.expert]
    return expert.noise_scale is None and not (source.down and expert.residual_scale is not None)


def _copy_bytes(writer: ShardedWriter, reader, tensor, buffers) -> None:
    """``tensor``'s bytes read range by range from the input file into a buffer at the output
    file's alignment (``AlignedBuffer``), so each range goes from the page cache to the output
    file with one copy, made by the kernel: no input page mapped, no staging copy, no torch (the
    copies start while the router thread is still importing it)."""
    total = math.prod(tensor.shape) * reader.info(tensor.source.tensor).itemsize
    if getattr(buffers, "chunk", None) is None:
        buffers.chunk = AlignedBuffer(CHUNK)
    at = writer.offset_of(tensor.name)
    for start in range(0, total, CHUNK):
        view = buffers.chunk.at(at + start, min(CHUNK, total - start))
        reader.read_bytes(tensor.source.tensor, start, view)
        writer.write_view(tensor.name, start, view)
    writer.complete(tensor.name)


def expert_tensor(plan: MoePlan, models, tensor, seed: int):
    """A copied tensor as read, with the expert's ``noise_scale`` (seeded by output name) and, on
    down projections, its ``residual_scale`` applied in the input's dtype, as mergekit does."""
    from mergesmith._torch import torch
    from mergesmith.execute.runner import generator_for

    source: Copy = tensor.source
    value = models[source.model].reader.get(source.tensor)
    if source.expert is None:
        return value
    expert = plan.config.all_experts()[source.expert]
    if expert.noise_scale is not None:
        noise = torch.randn(value.shape, generator=generator_for(seed, tensor.name)).to(value.dtype)
        value = value + noise * expert.noise_scale
    if source.down and expert.residual_scale is not None:
        value = value * expert.residual_scale
    return value
