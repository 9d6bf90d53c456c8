"""The base model's hidden states over the prompts, holding one decoder layer's tensors at a time.

Plain llama, mistral and qwen2 bases run through ``forward.py`` (the same states without
transformers' model code, which costs more to import than the pass itself); every other base
runs through transformers as follows.

transformers builds the model on the ``meta`` device (no memory); forward hooks put each module's
tensors in place, read from the input's reader in float32, just before the module runs and drop
them right after. So the pass is transformers' own forward (masks, rotary embeddings, attention
exactly as loading the model would give), its memory one layer plus the activations, and the base
may be any input mergesmith reads (a GGUF file, ``base+adapter``, a Hub snapshot). It runs in the
base's own dtype (mergekit: always bfloat16, which rounds a float32 model's states).

As mergekit's router.py (``hidden_states[:-1]``): the residual stream entering each decoder layer,
at the prompt's last token (``hidden``) or averaged over its tokens (``hidden_avg``). The last
layer's output is not needed, so that layer is not run.
"""

from __future__ import annotations

import contextlib

from mergesmith.errors import ArchitectureError
from mergesmith.io.header import ModelInput


def _skeleton(config: dict, device, torch):
    """The model on the meta device; buffers computed at init (rotary frequencies) rebuilt for real."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = {k: v for k, v in config.items() if k not in ("torch_dtype", "dtype")}
    try:
        hf_config = AutoConfig.for_model(**config)
    except (KeyError, ValueError) as exc:
        raise ArchitectureError(f"transformers does not know model_type {config.get('model_type')!r}: {exc}") from None
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32)
    inner = model.model
    for name, module in list(inner.named_children()):
        if any(b.is_meta for b in module.buffers(recurse=False)):
            setattr(inner, name, type(module)(config=hf_config).to(device))  # e.g. LlamaRotaryEmbedding
    return inner


def _swap(module, prefix: str, reader, device, dtype, torch, load: bool) -> None:
    for name, param in list(module.named_parameters()):
        owner = module.get_submodule(name.rpartition(".")[0]) if "." in name else module
        leaf = name.rpartition(".")[2]
        if load:
            tensor = reader.get(prefix + name).to(device=device, dtype=dtype)
        else:
            tensor = torch.empty(param.shape, device="meta")
        owner._parameters[leaf] = torch.nn.Parameter(tensor, requires_grad=False)


class _Enough(Exception):
    """Raised on entering the last layer: its input is the last state wanted, its output is not."""


@contextlib.contextmanager
def _streamed(inner, reader, device, dtype, torch, states: list, progress):
    """Hooks that load each piece (embeddings, each layer) around its forward and keep each
    layer's input (the residual stream entering it); the last layer is not run."""
    pieces = [("model.embed_tokens.", inner.embed_tokens)] + [
        (f"model.layers.{i}.", m) for i, m in enumerate(inner.layers)
    ]
    last = len(pieces) - 1
    handles = []
    for index, (prefix, module) in enumerate(pieces):

        def enter(m, args, kwargs, p=prefix, is_layer=index > 0, is_last=index == last):
            if is_layer:
                states.append((args[0] if args else kwargs["hidden_states"]).float())
            if is_last:
                raise _Enough
            _swap(m, p, reader, device, dtype, torch, True)

        def leave(m, _args, _out, p=prefix):
            _swap(m, p, reader, device, dtype, torch, False)
            progress()

        handles.append(module.register_forward_pre_hook(enter, with_kwargs=True))
        handles.append(module.register_forward_hook(leave))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def compute_dtype(base: ModelInput, device: str, torch):
    """The base's own dtype (bfloat16 or float32: what it runs in); float16 runs as float32 on a CPU."""
    stored = {info.dtype_name for info in base.tensors.values()}
    if stored == {"bfloat16"}:
        return torch.bfloat16
    if stored == {"float16"} and device != "cpu":
        return torch.float16
    return torch.float32


def _model_code_states(base: ModelInput, ids, mask, dtype, device, progress) -> list:
    from mergesmith._torch import torch

    inner = _skeleton(dict(base.config), device, torch)
    kept: list = []
    with _streamed(inner, base.reader, device, dtype, torch, kept, progress), torch.inference_mode():
        try:
            inner(input_ids=ids, attention_mask=mask, use_cache=False)
        except _Enough:
            pass
    return kept


def prompt_states(base: ModelInput, batch, *, average: bool, device: str = "cpu", progress=lambda: None):
    """``(layers, prompts, hidden)`` float32: each prompt's state entering each layer.

    ``batch``: the tokenizer's output (``input_ids``, ``attention_mask``), left-padded.
    """
    from mergesmith._torch import torch
    from mergesmith.moe import forward

    ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
    dtype = compute_dtype(base, device, torch)
    if forward.native(dict(base.config), ids.shape[1]):
        with torch.inference_mode():
            kept = forward.layer_inputs(base, ids, mask, dtype, device, progress)
    else:
        kept = _model_code_states(base, ids, mask, dtype, device, progress)
    states = torch.stack(kept)  # (layers, prompts, tokens, hidden)
    if not average:
        return states[:, :, -1, :].cpu()
    # The mean over the prompt's own tokens; mergekit divides by the padded length (see README).
    weights = mask.to(states.dtype)[None, :, :, None]
    return ((states * weights).sum(dim=2) / weights.sum(dim=2)).cpu()
