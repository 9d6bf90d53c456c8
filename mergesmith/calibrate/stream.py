"""The calibration stage, streamed: one decoder layer in memory at a time.

The transformers model is built on the meta device from the input's config (no weight
allocated); everything outside the decoder layers (embeddings, rotary tables, final norm) is
materialised from the checkpoint through mergesmith's reader; the model is in eval mode (no
dropout: configs such as OPT's or Phi-2's give it one). Windows of one length are grouped into
batches of at most ``BATCH_TOKENS`` tokens; one forward pass per batch, with every layer replaced
by a recorder (the last one stops the pass), yields the batch's embeddings and the arguments each
layer receives (masks, position embeddings, alibi tables, sliding windows) exactly as the model
computes them for that batch. Then, layer by layer: its weights are read (float32), forward
pre-hooks on its ``nn.Linear`` modules add ``XᵀX`` of their inputs to float64 sums (lower block
triangle only, mirrored at the end), every batch's hidden states go through with its recorded
arguments, the layer's sums are handed on and its weights dropped. Peak memory: one layer, its
Gram sums, the hidden states of all windows, one batch's activations, and the non-layer weights.
Linear modules called with the very same input tensor (q/k/v, gate/up) share one sum.

Models whose decoder layers are not one ``nn.ModuleList`` at the place the architecture data
names run whole (every weight in memory at once), with a warning.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence

from mergesmith._torch import torch
from mergesmith.arch.spec import ArchSpec
from mergesmith.errors import ArchitectureError, InputFormatError
from mergesmith.io.header import ModelInput

Layer = tuple[int, dict, dict]  # (index, {stored name: Gram}, {weight name: stored name})


class _Stop(Exception):
    """Raised by the last recorder: nothing after the layers is needed."""


class _Recorder(torch.nn.Module):
    def __init__(self, index: int, calls: dict, last: bool):
        super().__init__()
        self.index, self.calls, self.last = index, calls, last

    def forward(self, *args, **kwargs):
        hidden = args[0] if args else kwargs.pop("hidden_states")
        self.calls[self.index] = (hidden, args[1:], kwargs)
        if self.last:
            raise _Stop
        return hidden


# Gram sums are accumulated on their lower triangle only, in column blocks of this width: 55-75%
# of the flops of the full ``XᵀX`` at 2048-5632 features, with the same float64 dot products;
# the upper triangle is mirrored once per layer.
BLOCK = 512
# Windows of one length go through a layer together, up to this many tokens: larger matrix
# products in the forward pass and the Gram sums (2048 rows run near the CPU's peak).
BATCH_TOKENS = 2048


def add_gram(total: torch.Tensor, flat: torch.Tensor) -> None:
    """``total += flatᵀ flat`` on the lower block triangle of ``total`` (float64, in place)."""
    features = flat.shape[1]
    for lo in range(0, features, BLOCK):
        hi = min(features, lo + BLOCK)
        total[lo:, lo:hi].addmm_(flat[:, lo:].T, flat[:, lo:hi])


def mirror(total: torch.Tensor) -> torch.Tensor:
    """``total`` made exactly symmetric from its lower triangle (in place)."""
    for lo in range(0, total.shape[0], BLOCK):
        hi = min(total.shape[0], lo + BLOCK)
        total[:lo, lo:hi] = total[lo:hi, :lo].T
        square = total[lo:hi, lo:hi]
        square.copy_(square.tril() + square.tril(-1).T)
    return total


class GramHooks:
    """Float64 sums of ``XᵀX`` of each linear module's input; one sum per distinct input tensor."""

    def __init__(self, modules: dict[str, torch.nn.Linear]):
        self.sums: dict[str, torch.Tensor] = {}
        self.aliases: dict[str, str] = {}
        self.rows: dict[str, int] = {}  # tokens each sum has seen
        self._seen: list[tuple[torch.Tensor, str]] = []  # this call's inputs, held so ids stay unique
        self._handles = [m.register_forward_pre_hook(self._hook(name)) for name, m in modules.items()]

    def _hook(self, name: str) -> Callable:
        def hook(module, args):
            x = args[0]
            owner = next((stored for seen, stored in self._seen if seen is x), None)
            if owner is not None:
                self.aliases.setdefault(name, owner)
                return
            self._seen.append((x, name))
            self.aliases.setdefault(name, name)
            flat = x.reshape(-1, x.shape[-1]).to(torch.float64)
            stored = self.aliases[name]
            if stored not in self.sums:
                self.sums[stored] = torch.zeros(flat.shape[1], flat.shape[1], dtype=torch.float64)
            add_gram(self.sums[stored], flat)  # in place: no [in, in] temporary per call
            self.rows[stored] = self.rows.get(stored, 0) + flat.shape[0]

        return hook

    def means(self) -> dict[str, torch.Tensor]:
        """``XᵀX / N`` per stored input in float32, as the cache stores it (the mean over tokens, so
        models calibrated on different token counts weigh alike, as FusionBench's RegMean averages
        them); the float64 sums are released one by one."""
        means = {}
        for name in list(self.sums):
            total = self.sums.pop(name)
            means[name] = mirror(total.div_(self.rows[name]).to(torch.float32))
            del total
        return means

    def end_call(self) -> None:
        self._seen.clear()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def _build(model: ModelInput):
    from accelerate import init_empty_weights
    from huggingface_hub.errors import StrictDataclassError
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.for_model(**_decoded(dict(model.config)))
        with init_empty_weights():  # parameters on meta; buffers (rotary tables) computed for real
            hf = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    except (ValueError, KeyError, TypeError, ImportError, StrictDataclassError) as exc:
        raise ArchitectureError(
            f"model '{model.key}': transformers cannot build {model.config.get('architectures')} ({exc}); "
            "regmean runs the model to calibrate it: merge it with another method"
        ) from None
    return hf.eval()  # from_config leaves training mode on: dropout would perturb every Gram


# transformers writes inf and nan into config.json as tagged objects (Falcon-H1's time_step_limit).
_FLOATS = {"Infinity": math.inf, "-Infinity": -math.inf, "NaN": math.nan}


def _decoded(value):
    """A config.json value with transformers' ``{"__float__": "Infinity"}`` tags made floats again."""
    if isinstance(value, dict):
        if set(value) == {"__float__"} and value["__float__"] in _FLOATS:
            return _FLOATS[value["__float__"]]
        return {k: _decoded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decoded(v) for v in value]
    return value


def _set(root: torch.nn.Module, name: str, tensor: torch.Tensor) -> None:
    path, _, leaf = name.rpartition(".")
    module = root.get_submodule(path)
    setattr(module, leaf, torch.nn.Parameter(tensor, requires_grad=False))


def _materialise(root: torch.nn.Module, model: ModelInput, names: Sequence[str], tied: dict) -> None:
    for name in names:
        source = name if name in model.tensors else tied.get(name)
        if source is None or source not in model.tensors:
            raise ArchitectureError(
                f"model '{model.key}': transformers' model has parameter {name}, the checkpoint has not; "
                "the checkpoint does not match its config.json"
            )
        _set(root, name, model.reader.get(source).to(torch.float32))


def _layer_prefix(arch: ArchSpec) -> str:
    return arch.layer[0].name.split(".{layer}")[0]


def _linears(layer: torch.nn.Module, prefix: str) -> dict[str, torch.nn.Linear]:
    dot = prefix + "." if prefix else ""
    return {f"{dot}{name}.weight": m for name, m in layer.named_modules() if isinstance(m, torch.nn.Linear) and name}


def _record(base, layers, batch: list[list[int]]) -> dict:
    """Each layer's (hidden, args, kwargs) for one batch of equal-length windows, from one
    recorded forward pass: masks, positions and per-token inputs exactly as the model makes them
    for that batch (alibi tables fold the batch into their first dimension; no reshaping guessed)."""
    calls: dict = {}
    real = list(layers)
    for i in range(len(layers)):
        layers[i] = _Recorder(i, calls, i == len(layers) - 1)
    try:
        with torch.no_grad():
            base(input_ids=torch.tensor(batch), use_cache=False)
    except _Stop:
        pass
    finally:
        for i, layer in enumerate(real):
            layers[i] = layer
    return calls


def layer_grams(model: ModelInput, arch: ArchSpec, windows: list[list[int]]) -> Iterator[Layer]:
    """Per decoder layer (in order), the mean Gram matrices of its linear layers' inputs over
    ``windows`` (token id lists), computed as the layer is consumed: one layer in memory."""
    if not windows:
        raise InputFormatError(f"model '{model.key}': no calibration tokens to run it on; give a calibration text")
    hf = _build(model)
    prefix = _layer_prefix(arch)
    try:
        layers = hf.get_submodule(prefix)
    except AttributeError:
        layers = None
    count = arch.num_layers(dict(model.config), f"model '{model.key}'")
    if not isinstance(layers, torch.nn.ModuleList) or len(layers) != count:
        yield from _whole_model(hf, model, windows, prefix, arch)
        return
    names = [n for n, _ in hf.named_parameters() if not n.startswith(prefix + ".")]
    base = hf.get_submodule(prefix.rsplit(".", 1)[0]) if "." in prefix else hf
    tied = {w.name: w.tied_to[0] for w in arch.pre + arch.post if w.tied_to}
    outside = [n for n in names if n.startswith(_prefix_of(base, hf))]
    _materialise(hf, model, outside, tied)
    batches = []  # per batch: [hidden states, {layer: (args, kwargs)}]
    for group in _groups(windows):
        calls = _record(base, layers, group)
        batches.append([calls[0][0], {i: (a, k) for i, (_, a, k) in calls.items()}])
    for name in outside:  # the embeddings did their work: only the layers run from here on
        _set(hf, name, torch.empty(hf.get_parameter(name).shape, device="meta"))
    with torch.no_grad():
        for i, layer in enumerate(layers):
            yield i, *_run_layer(layer, f"{prefix}.{i}", model, batches, i)


def _prefix_of(base: torch.nn.Module, root: torch.nn.Module) -> str:
    return next(name for name, m in root.named_modules() if m is base)


def _run_layer(layer, prefix: str, model: ModelInput, batches: list, index: int):
    names = [f"{prefix}.{n}" for n, _ in layer.named_parameters()]
    _materialise_layer(layer, prefix, model, names)
    hooks = GramHooks(_linears(layer, prefix))
    try:
        for batch in batches:
            args, kwargs = batch[1][index]
            out = layer(batch[0], *args, **kwargs)
            batch[0] = out[0] if isinstance(out, tuple) else out
            hooks.end_call()
    finally:
        hooks.remove()
        layer.to("meta")  # the layer's weights go before its sums are rounded to float32
    return hooks.means(), hooks.aliases


def _groups(windows: list[list[int]]) -> list[list[list[int]]]:
    """Consecutive windows of one length, at most ``BATCH_TOKENS`` tokens a group (at least one window)."""
    groups: list[list[list[int]]] = []
    for ids in windows:
        run = groups[-1] if groups else None
        if run and len(run[0]) == len(ids) and (len(run) + 1) * len(ids) <= BATCH_TOKENS:
            run.append(ids)
        else:
            groups.append([ids])
    return groups


def _materialise_layer(layer, prefix: str, model: ModelInput, names: list[str]) -> None:
    for name in names:
        if name not in model.tensors:
            raise ArchitectureError(
                f"model '{model.key}': transformers' layer has parameter {name}, the checkpoint has not; "
                "the checkpoint does not match its config.json"
            )
        _set(layer, name[len(prefix) + 1 :], model.reader.get(name).to(torch.float32))


def _whole_model(hf, model: ModelInput, windows, prefix: str, arch: ArchSpec) -> Iterator[Layer]:
    total = sum(math.prod(info.shape) for info in model.tensors.values())
    warnings.warn(
        f"model '{model.key}': no layer-by-layer path for {model.config.get('architectures')} (no module list "
        f"'{prefix}'); calibrating the whole model in memory, about {total * 4 / 1e9:.1f} GB in float32",
        stacklevel=3,
    )
    names = [n for n, _ in hf.named_parameters()]
    _materialise(hf, model, names, {})
    outside = {w.name for w in arch.pre + arch.post}  # the head: averaged, never calibrated
    hooks = GramHooks({k: m for k, m in _linears(hf, "").items() if k not in outside})
    try:
        with torch.no_grad():
            for ids in windows:
                hf(input_ids=torch.tensor([ids]), use_cache=False)
                hooks.end_call()
    finally:
        hooks.remove()
    yield -1, hooks.means(), hooks.aliases
