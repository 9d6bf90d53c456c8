"""A MoE config and its inputs' headers → the output, tensor by tensor, without reading a tensor.

Attention, norms, embeddings and the head come from the base model; each decoder layer's MLP
(roles mlp_gate, mlp_up, mlp_down) is copied once per expert; each layer gets a router of
``(experts, hidden)`` rows (and Qwen2-MoE a ``(1, hidden)`` shared-expert gate). Names are those
of the published checkpoints (Mixtral-8x7B's ``block_sparse_moe.experts.E.w1``, Qwen1.5-MoE's
``mlp.experts.E.gate_proj``), which transformers 4 and 5 load and llama.cpp's converter reads.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass

from mergesmith.arch.spec import ArchSpec, arch_for_config
from mergesmith.config.load import dtype_name
from mergesmith.errors import ArchitectureError, MissingTensorError, ShapeMismatchError
from mergesmith.io.header import ModelHeader
from mergesmith.moe.config import MoeConfig

MLP_ROLES = {"mlp_gate": ("w1", "gate_proj"), "mlp_down": ("w2", "down_proj"), "mlp_up": ("w3", "up_proj")}
INPUT_TYPES = {"mixtral": ("llama", "mistral"), "qwen2_moe": ("llama", "mistral", "qwen2")}
CLASS = {"mixtral": "MixtralForCausalLM", "qwen2_moe": "Qwen2MoeForCausalLM"}
# Router defaults of transformers' MixtralConfig / Qwen2MoeConfig, written out so the config
# loads the same under any transformers version.
ROUTER_KEYS = {"output_router_logits": False, "router_aux_loss_coef": 0.001}


@dataclass(frozen=True)
class Copy:
    """Copy ``tensor`` of ``model``; ``expert`` indexes config.all_experts() (None: the base)."""

    model: str
    tensor: str
    expert: int | None = None
    down: bool = False  # an MLP down projection: residual_scale applies


@dataclass(frozen=True)
class Router:
    layer: int
    shared: bool = False  # Qwen2-MoE's shared_expert_gate


@dataclass(frozen=True)
class Zeros:
    """Qwen2-MoE's q/k/v biases for a base without them: zeros change nothing."""


@dataclass(frozen=True)
class OutTensor:
    name: str
    shape: tuple[int, ...]
    source: Copy | Router | Zeros


@dataclass(frozen=True)
class MoePlan:
    config: MoeConfig
    source: str
    family: str  # mixtral | qwen2_moe
    num_layers: int
    hidden: int
    out_dtype: str
    tensors: tuple[OutTensor, ...]
    out_config: dict
    tokenizer_donor: str

    @property
    def router_shape(self) -> tuple[int, int]:
        return (len(self.config.experts), self.hidden)


def _check_types(config: MoeConfig, headers: Mapping[str, ModelHeader], source: str) -> str:
    family = config.family
    base_type = headers[config.base_model].config.get("model_type")
    if base_type not in INPUT_TYPES[family]:
        raise ArchitectureError(
            f"{source}: the base '{config.base_model}' is {base_type!r}; a {CLASS[family]} is built from "
            f"{' or '.join(INPUT_TYPES[family])} models"
        )
    for key in [e.source_model for e in config.all_experts()]:
        model_type = headers[key].config.get("model_type")
        if model_type != base_type:
            raise ArchitectureError(
                f"{source}: expert '{key}' is {model_type!r} but the base is {base_type!r}; "
                "experts must be fine-tunes of the base's architecture"
            )
    return family


def _mlp_name(family: str, layer: int, expert: int | None, role: str) -> str:
    w, proj = MLP_ROLES[role]
    if family == "mixtral":
        return f"model.layers.{layer}.block_sparse_moe.experts.{expert}.{w}.weight"
    where = "shared_expert" if expert is None else f"experts.{expert}"
    return f"model.layers.{layer}.mlp.{where}.{proj}.weight"


def _router_name(family: str, layer: int, shared: bool = False) -> str:
    if family == "mixtral":
        return f"model.layers.{layer}.block_sparse_moe.gate.weight"
    return f"model.layers.{layer}.mlp.{'shared_expert_gate' if shared else 'gate'}.weight"


def _expert_tensor(config: MoeConfig, headers, index: int, name: str, base_shape, source: str):
    key = config.all_experts()[index].source_model
    info = headers[key].tensors.get(name)
    if info is None:
        raise MissingTensorError(f"{source}: expert '{key}' has no tensor {name}; experts need every MLP tensor")
    if tuple(info.shape) != tuple(base_shape):
        raise ShapeMismatchError(
            f"{source}: expert '{key}': {name} is {tuple(info.shape)} but the base '{config.base_model}' has "
            f"{tuple(base_shape)}; experts must be fine-tunes of the base model (same sizes)"
        )
    return Copy(key, name, index, down=name.endswith("down_proj.weight"))


def _layer(config, headers, arch: ArchSpec, family: str, layer: int, source: str) -> list[OutTensor]:
    base = headers[config.base_model]
    out: list[OutTensor] = []
    n_routed = len(config.experts)
    for spec in arch.layer_weights(layer):
        info = base.tensors.get(spec.name)
        if spec.role.startswith("mlp_") and spec.role != "mlp_norm":
            if info is None:
                continue
            if spec.role not in MLP_ROLES:
                raise ArchitectureError(f"{source}: the base has {spec.name}; MoE experts take MLPs without biases")
            for index in range(len(config.all_experts())):
                copied = _expert_tensor(config, headers, index, spec.name, info.shape, source)
                expert = index if index < n_routed else None
                out.append(OutTensor(_mlp_name(family, layer, expert, spec.role), tuple(info.shape), copied))
        elif info is not None:
            out.append(OutTensor(spec.name, tuple(info.shape), Copy(config.base_model, spec.name)))
        elif not spec.optional:
            raise _missing(config, spec.name, source)
    return out


def _missing(config: MoeConfig, name: str, source: str) -> MissingTensorError:
    return MissingTensorError(f"{source}: the base '{config.base_model}' has no tensor {name}; is it a complete model?")


def _base_tensors(config: MoeConfig, base: ModelHeader, specs, source: str) -> list[OutTensor]:
    """The embeddings, final norm and head: copied from the base (a tied head is absent: skipped)."""
    out = []
    for spec in specs:
        if spec.name in base.tensors:
            out.append(OutTensor(spec.name, tuple(base.tensors[spec.name].shape), Copy(config.base_model, spec.name)))
        elif not spec.optional:
            raise _missing(config, spec.name, source)
    return out


def _zero_biases(config: MoeConfig, base_config: Mapping, layer: int, present: set[str]) -> list[OutTensor]:
    heads = base_config["num_attention_heads"]
    kv = base_config.get("num_key_value_heads") or heads
    head_dim = base_config.get("head_dim") or base_config["hidden_size"] // heads
    out = []
    for proj, n in (("q_proj", heads), ("k_proj", kv), ("v_proj", kv)):
        name = f"model.layers.{layer}.self_attn.{proj}.bias"
        if name not in present:
            out.append(OutTensor(name, (n * head_dim,), Zeros()))
    return out


def _routers(config: MoeConfig, family: str, layer: int, hidden: int) -> list[OutTensor]:
    out = [OutTensor(_router_name(family, layer), (len(config.experts), hidden), Router(layer))]
    if family == "qwen2_moe":
        out.append(OutTensor(_router_name(family, layer, True), (1, hidden), Router(layer, shared=True)))
    return out


def _out_dtype(config: MoeConfig, base: ModelHeader) -> str:
    chosen = dtype_name(config.dtype) or dtype_name(base.config.get("torch_dtype") or base.config.get("dtype"))
    if chosen in ("float16", "bfloat16", "float32", "float64"):
        return chosen
    embed = next(iter(base.tensors.values()))
    return embed.dtype_name


def _out_config(config: MoeConfig, base: ModelHeader, family: str, out_dtype: str) -> dict:
    """The base's config.json as the MoE family's (mergekit builds the same through transformers'
    config classes)."""
    out = copy.deepcopy(dict(base.config))
    out.update(architectures=[CLASS[family]], model_type=family, num_experts_per_tok=config.experts_per_token)
    out.update(ROUTER_KEYS, sliding_window=None)
    if family == "mixtral":
        out.update(num_local_experts=len(config.experts), router_jitter_noise=0.0)
    else:
        size = out["intermediate_size"]
        out.update(
            num_experts=len(config.experts),
            decoder_sparse_step=1,
            norm_topk_prob=True,
            use_sliding_window=False,
            shared_expert_intermediate_size=size,
            moe_intermediate_size=size,
            mlp_only_layers=[],
            qkv_bias=True,
            layer_types=["full_attention"] * out["num_hidden_layers"],
        )
        out.setdefault("max_window_layers", 28)  # Qwen2MoeConfig's default, as mergekit writes it
    out["dtype" if "dtype" in out or "torch_dtype" not in out else "torch_dtype"] = out_dtype
    return out


def _tokenizer_donor(config: MoeConfig, headers: Mapping[str, ModelHeader], source: str) -> str:
    """The base, or ``tokenizer_source``: a model whose vocabulary fits the base's embeddings."""
    choice = config.tokenizer_source
    if choice in (None, "base"):
        return config.base_model
    rows, theirs = headers[config.base_model].config.get("vocab_size"), headers[choice].config.get("vocab_size")
    if rows != theirs:
        raise ArchitectureError(
            f"{source}: tokenizer_source '{choice}' has vocab_size {theirs}, the base {rows}; a MoE keeps the "
            "base's embeddings, so take the tokenizer of a model with the same vocabulary"
        )
    return choice


def plan_moe(config: MoeConfig, headers: Mapping[str, ModelHeader], source: str = "<moe config>") -> MoePlan:
    """Every output tensor and where it comes from; checks families, tensors and shapes."""
    family = _check_types(config, headers, source)
    base = headers[config.base_model]
    arch = arch_for_config(base.config, f"{source}: base model '{config.base_model}'")
    num_layers = arch.num_layers(dict(base.config), f"base model '{config.base_model}'")
    for expert in config.all_experts():
        theirs = headers[expert.source_model].config.get(arch.num_layers_key)
        if theirs != num_layers:
            raise ShapeMismatchError(
                f"{source}: expert '{expert.source_model}' has {theirs} layers, the base {num_layers}; "
                "experts must be fine-tunes of the base model"
            )
    hidden = int(base.config["hidden_size"])
    tensors = _base_tensors(config, base, arch.pre, source)
    for layer in range(num_layers):
        layer_tensors = _layer(config, headers, arch, family, layer, source)
        if family == "qwen2_moe":
            layer_tensors += _zero_biases(config, base.config, layer, {t.name for t in layer_tensors})
        tensors += layer_tensors + _routers(config, family, layer, hidden)
    tensors += _base_tensors(config, base, arch.post, source)
    out_dtype = _out_dtype(config, base)
    return MoePlan(
        config,
        source,
        family,
        num_layers,
        hidden,
        out_dtype,
        tuple(tensors),
        _out_config(config, base, family, out_dtype),
        _tokenizer_donor(config, headers, source),
    )
