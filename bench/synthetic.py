"""Seeded synthetic llama checkpoint pairs, written straight to safetensors.

    SHAPES["1b"]                         TinyLlama-1.1B shape; "3b" OpenLLaMA-3B; "pico" tiny
    ensure_pair(shape, root) -> Pair     root/<shape>/{a,b}, generated once and then reused

Model A draws every matrix from N(0, WEIGHT_STD) and every norm from 1 + N(0, WEIGHT_STD);
model B is A + N(0, NOISE * WEIGHT_STD), a "fine-tune" whose task vector has mixed signs in
every tensor. Each tensor has its own generator seeded from (seed, name), and tensors are
generated and written one at a time, so memory stays at one tensor whatever the shape. Shards
follow Hugging Face: ~2 GB each plus model.safetensors.index.json, or a single
model.safetensors when everything fits in one. No transformers model is instantiated.
"""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

GENERATOR_VERSION = 1  # bump when the bytes produced for the same parameters change
WEIGHT_STD = 0.02  # transformers' llama initializer_range
# B - A relative to A's spread. Large enough that slerp is measurably not lerp
# (cos(A, B) ~ 0.89) and that TIES' magnitude mask selects among clearly non-zero deltas.
NOISE = 0.5
SEED = 0
SHARD_BYTES = 2_000_000_000  # Hugging Face's "2GB"
MARKER = "bench_models.json"  # written last: its presence with equal parameters = complete


@dataclass(frozen=True)
class Shape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int


SHAPES = {
    "pico": Shape(hidden=64, intermediate=128, layers=2, heads=4, kv_heads=2, vocab=256),
    "1b": Shape(hidden=2048, intermediate=5632, layers=22, heads=32, kv_heads=4, vocab=32000),
    "3b": Shape(hidden=3200, intermediate=8640, layers=26, heads=32, kv_heads=32, vocab=32000),
}


@dataclass(frozen=True)
class Pair:
    a: Path  # the base model
    b: Path  # the "fine-tune": a + seeded noise


def tensor_shapes(s: Shape) -> dict[str, tuple[int, ...]]:
    """Llama tensor names and shapes in state-dict order (untied lm_head)."""
    kv = s.kv_heads * (s.hidden // s.heads)
    per_layer = {
        "input_layernorm.weight": (s.hidden,),
        "self_attn.q_proj.weight": (s.hidden, s.hidden),
        "self_attn.k_proj.weight": (kv, s.hidden),
        "self_attn.v_proj.weight": (kv, s.hidden),
        "self_attn.o_proj.weight": (s.hidden, s.hidden),
        "post_attention_layernorm.weight": (s.hidden,),
        "mlp.gate_proj.weight": (s.intermediate, s.hidden),
        "mlp.up_proj.weight": (s.intermediate, s.hidden),
        "mlp.down_proj.weight": (s.hidden, s.intermediate),
    }
    shapes = {"model.embed_tokens.weight": (s.vocab, s.hidden)}
    for i in range(s.layers):
        shapes.update({f"model.layers.{i}.{k}": v for k, v in per_layer.items()})
    shapes["model.norm.weight"] = (s.hidden,)
    shapes["lm_head.weight"] = (s.vocab, s.hidden)
    return shapes


def llama_config(s: Shape) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": s.hidden,
        "intermediate_size": s.intermediate,
        "num_hidden_layers": s.layers,
        "num_attention_heads": s.heads,
        "num_key_value_heads": s.kv_heads,
        "vocab_size": s.vocab,
        "hidden_act": "silu",
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "initializer_range": WEIGHT_STD,
        "attention_bias": False,
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "bfloat16",
        "dtype": "bfloat16",
    }


def _generator(*parts: object) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(":".join(map(str, parts)).encode()))


def make_pair_tensors(name: str, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) for one tensor, bf16; independent of every other tensor."""
    a = torch.empty(shape).normal_(0.0, WEIGHT_STD, generator=_generator(SEED, "a", name))
    if len(shape) == 1:
        a += 1.0  # RMSNorm weights sit around one
    b = a + torch.empty(shape).normal_(0.0, NOISE * WEIGHT_STD, generator=_generator(SEED, "b", name))
    return a.to(torch.bfloat16), b.to(torch.bfloat16)


def plan_shards(shapes: dict[str, tuple[int, ...]]) -> list[list[str]]:
    """Greedy, in order: a new shard when the next tensor would pass SHARD_BYTES."""
    shards: list[list[str]] = [[]]
    size = 0
    for name, shape in shapes.items():
        nbytes = 2 * torch.Size(shape).numel()
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def shard_header(names: list[str], shapes: dict[str, tuple[int, ...]]) -> bytes:
    """The safetensors header (length prefix + JSON padded to 8 bytes) for tensors in order."""
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name in names:
        end = offset + 2 * torch.Size(shapes[name]).numel()
        header[name] = {"dtype": "BF16", "shape": list(shapes[name]), "data_offsets": [offset, end]}
        offset = end
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def shard_names(count: int) -> list[str]:
    if count == 1:
        return ["model.safetensors"]
    return [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


def write_pair(shape: Shape, a_dir: Path, b_dir: Path) -> None:
    """Both models, shard by shard and tensor by tensor, plus config.json and the index."""
    shapes = tensor_shapes(shape)
    shards = plan_shards(shapes)
    files = shard_names(len(shards))
    for out in (a_dir, b_dir):
        out.mkdir(parents=True)
        (out / "config.json").write_text(json.dumps(llama_config(shape), indent=2) + "\n")
    for names, file in zip(shards, files):
        header = shard_header(names, shapes)
        with open(a_dir / file, "wb") as fa, open(b_dir / file, "wb") as fb:
            fa.write(header)
            fb.write(header)
            for name in names:
                a, b = make_pair_tensors(name, shapes[name])
                fa.write(a.view(torch.int16).numpy())
                fb.write(b.view(torch.int16).numpy())
    if len(files) > 1:
        total = sum(2 * torch.Size(s).numel() for s in shapes.values())
        weight_map = {name: files[i] for i, names in enumerate(shards) for name in names}
        index = json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
        for out in (a_dir, b_dir):
            (out / "model.safetensors.index.json").write_text(index + "\n")


def marker_params(shape: Shape) -> dict:
    return {
        "generator_version": GENERATOR_VERSION,
        "shape": asdict(shape),
        "seed": SEED,
        "weight_std": WEIGHT_STD,
        "noise": NOISE,
        "shard_bytes": SHARD_BYTES,
    }


def ensure_pair(shape_name: str, root: Path) -> tuple[Pair, bool]:
    """The cached pair for ``shape_name`` under root, generated if missing or stale.

    Returns the pair and whether it was generated now. Generation goes to a hidden sibling
    renamed into place at the end, so an interrupted run never leaves a half pair behind.
    """
    shape = SHAPES[shape_name]
    final = root / shape_name
    pair = Pair(final / "a", final / "b")
    marker = final / MARKER
    if marker.is_file() and json.loads(marker.read_text()) == marker_params(shape):
        return pair, False
    tmp = root / f".{shape_name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    write_pair(shape, tmp / "a", tmp / "b")
    (tmp / MARKER).write_text(json.dumps(marker_params(shape), indent=2) + "\n")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return pair, True
