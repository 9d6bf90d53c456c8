"""The residual stream of a llama, mistral or qwen2 base over the prompts, without transformers'
model code: the bases a MoE is built from, in their plain form.

Why: building the model on the meta device imports transformers' model machinery (its masking,
attention and kernel registries: about a second of CPU) for a pass that itself costs about half
that on a 1B model; the build waits for the routers, so that second was most of a ``hidden``
build's time beyond the copying. The decoder of these three families is short enough to state:

    h₀ = E[ids];  for each layer:  a = h + o(attn(rope(q(n₁(h))), rope(k(n₁(h))), v(n₁(h))))
                                   h' = a + down(silu(gate(n₂(a))) · up(n₂(a)))
    nᵢ(x) = wᵢ · (x / sqrt(mean(x²) + eps))  (in float32, then the compute dtype, as transformers)

with rotary embeddings of the config's ``rope_theta`` at positions 0..L-1 (as transformers runs
a left-padded batch without position ids, so mergekit's states are these), causal attention
over the prompt's own tokens, grouped key/value heads, and q/k/v biases where the checkpoint has
them (qwen2). Operations run in the same dtype and order as transformers' modules, so the states
agree with the model-code path to rounding (tests/moe/test_moe_forward.py). Anything else in a
config (rope scaling, a sliding window shorter than the prompts, another activation, MLP biases,
tensor-parallel slices) is left to the model-code path: ``native`` says which.
"""

from __future__ import annotations

from mergesmith._torch import torch
from mergesmith.io.header import ModelInput

FAMILIES = ("llama", "mistral", "qwen2")


def _rope_theta(config: dict) -> float | None:
    """The base frequency of plain rotary embeddings; None for any scaled or partial variant."""
    if config.get("rope_scaling") not in (None, {}) and config["rope_scaling"].get("rope_type", "default") != "default":
        return None
    params = config.get("rope_parameters") or {}
    if params.get("rope_type", "default") != "default" or config.get("partial_rotary_factor", 1.0) != 1.0:
        return None
    return float(params.get("rope_theta", config.get("rope_theta", 10000.0)))


def native(config: dict, tokens: int) -> bool:
    """Whether this pass computes ``config``'s states for prompts of ``tokens`` tokens."""
    window = config.get("sliding_window")
    windowed = config.get("model_type") == "mistral" or config.get("use_sliding_window")
    return (
        config.get("model_type") in FAMILIES
        and config.get("hidden_act", "silu") == "silu"
        and not config.get("mlp_bias")
        and config.get("pretraining_tp", 1) in (None, 1)
        and _rope_theta(config) is not None
        and not (windowed and window is not None and tokens > window)
    )


def _norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    wide = x.to(torch.float32)
    wide = wide * torch.rsqrt(wide.pow(2).mean(-1, keepdim=True) + eps)
    return weight * wide.to(x.dtype)


def _rotary(config: dict, head_dim: int, length: int, dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / (_rope_theta(config) ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    positions = torch.arange(length, dtype=torch.float32)
    freqs = torch.outer(positions, inv_freq)
    angles = torch.cat((freqs, freqs), dim=-1)
    return angles.cos().to(device=device, dtype=dtype), angles.sin().to(device=device, dtype=dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    turned = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + turned * sin


class _Weights:
    """One layer's tensors, read from the base's reader in the compute dtype as they are needed."""

    def __init__(self, base: ModelInput, prefix: str, dtype, device):
        self.base, self.prefix, self.dtype, self.device = base, prefix, dtype, device

    def __call__(self, name: str) -> torch.Tensor | None:
        full = self.prefix + name
        if full not in self.base.tensors:
            return None
        return self.base.reader.get(full).to(device=self.device, dtype=self.dtype)


def _attention(h: torch.Tensor, w: _Weights, config: dict, mask, rotary) -> torch.Tensor:
    batch, length, _ = h.shape
    heads, groups = config["num_attention_heads"], config.get("num_key_value_heads") or config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads

    def project(name: str, count: int) -> torch.Tensor:
        out = torch.nn.functional.linear(h, w(f"self_attn.{name}.weight"), w(f"self_attn.{name}.bias"))
        return out.view(batch, length, count, head_dim).transpose(1, 2)

    q, k, v = project("q_proj", heads), project("k_proj", groups), project("v_proj", groups)
    q, k = _rotate(q, *rotary), _rotate(k, *rotary)
    if groups != heads:
        k, v = k.repeat_interleave(heads // groups, dim=1), v.repeat_interleave(heads // groups, dim=1)
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=head_dim**-0.5)
    out = out.transpose(1, 2).reshape(batch, length, heads * head_dim)
    return torch.nn.functional.linear(out, w("self_attn.o_proj.weight"), w("self_attn.o_proj.bias"))


def _layer(h: torch.Tensor, w: _Weights, config: dict, mask, rotary) -> torch.Tensor:
    eps = config.get("rms_norm_eps", 1e-6)
    h = h + _attention(_norm(h, w("input_layernorm.weight"), eps), w, config, mask, rotary)
    x = _norm(h, w("post_attention_layernorm.weight"), eps)
    linear = torch.nn.functional.linear
    gated = torch.nn.functional.silu(linear(x, w("mlp.gate_proj.weight"))) * linear(x, w("mlp.up_proj.weight"))
    return h + linear(gated, w("mlp.down_proj.weight"))


def layer_inputs(base: ModelInput, ids, mask, dtype, device, progress) -> list[torch.Tensor]:
    """The residual stream entering each decoder layer, ``(prompts, tokens, hidden)`` float32 each.

    ``mask``: 1 for a prompt's tokens, 0 for its left padding. A padding position attends to
    itself alone (it has no earlier token of its prompt), which keeps its state finite; no
    prompt token attends to it.
    """
    config = dict(base.config)
    length = ids.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    allowed = (causal[None] & mask.bool()[:, None, :]) | torch.eye(length, dtype=torch.bool, device=device)[None]
    allowed = allowed[:, None]  # (prompts, 1, tokens, tokens): every head alike
    heads = config["num_attention_heads"]
    rotary = _rotary(config, config.get("head_dim") or config["hidden_size"] // heads, length, dtype, device)
    h = base.reader.get("model.embed_tokens.weight")[ids.cpu()].to(device=device, dtype=dtype)
    progress()
    kept, count = [], int(config["num_hidden_layers"])
    for index in range(count):
        kept.append(h.float())
        if index == count - 1:
            break  # its output is not wanted
        h = _layer(h, _Weights(base, f"model.layers.{index}.", dtype, device), config, allowed, rotary)
        progress()
    return kept
