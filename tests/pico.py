"""Pico checkpoints: tiny, real, deterministic transformers models for merge tests.

Each model is built by transformers from a small config under a seeded RNG, saved with
``save_pretrained`` (optionally sharded) and ships a byte-level BPE tokenizer trained in-process
on fixed sentences, so ``AutoModelForCausalLM``, ``AutoTokenizer`` and ``pipeline`` all load it.

    make_pico(kind, path, seed=0)          one model
    make_family(kind, root, seed=0)        root/base plus root/ft1.. = base + FINETUNE_SCALE * randn

Same arguments give bit-identical files (tests/test_fixtures.py checks this).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

KINDS = ("llama", "mistral", "qwen2", "phi2", "gemma3")
DEFAULT_LAYERS = 4
VOCAB_SIZE = 300  # config vocab; the tokenizer is trained to exactly this size
HIDDEN, INTERMEDIATE, HEADS, KV_HEADS, HEAD_DIM = 64, 128, 4, 2, 16
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>")  # ids 0..3, in this order
UNK_ID, BOS_ID, EOS_ID, PAD_ID = range(4)
# Fine-tune delta scale: the same order as transformers' init std (0.02), so task vectors are
# far above rounding noise and have mixed signs in every tensor.
FINETUNE_SCALE = 0.02
# Gemma3's sliding window, small enough that sliding and full layers differ on short prompts.
GEMMA3_SLIDING_WINDOW = 8

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
CORPUS = (
    "The quick brown fox jumps over the lazy dog.",
    "A model merge averages the weights of several fine-tuned checkpoints.",
    "Small models train quickly and run on any laptop.",
    "She sells sea shells by the sea shore, and the shells she sells are sea shells.",
    "Hello world! How are you today? I am fine, thank you.",
    "Numbers like 1, 2, 3 and 42 appear in text too.",
)


def gemma3_layer_types(num_layers: int) -> list[str]:
    """Alternate sliding/full so that slicing layers must carry the right entries along."""
    return ["full_attention" if i % 2 else "sliding_attention" for i in range(num_layers)]


def pico_config(kind: str, num_layers: int | None = None):
    """The transformers config of a pico model of ``kind``."""
    from transformers import (
        Gemma3TextConfig,
        LlamaConfig,
        MistralConfig,
        PhiConfig,
        Qwen2Config,
    )

    layers = DEFAULT_LAYERS if num_layers is None else num_layers
    common = dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=layers,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
        max_position_embeddings=256,
    )
    if kind == "llama":
        return LlamaConfig(**common, head_dim=HEAD_DIM, tie_word_embeddings=False)
    if kind == "mistral":
        return MistralConfig(**common, head_dim=HEAD_DIM, tie_word_embeddings=False)
    if kind == "qwen2":
        return Qwen2Config(**common, tie_word_embeddings=True)
    if kind == "phi2":  # head_dim is hidden / heads = 16 by construction
        return PhiConfig(**common, tie_word_embeddings=False)
    if kind == "gemma3":
        return Gemma3TextConfig(
            **common,
            head_dim=HEAD_DIM,
            query_pre_attn_scalar=HEAD_DIM,
            tie_word_embeddings=True,
            sliding_window=GEMMA3_SLIDING_WINDOW,
            layer_types=gemma3_layer_types(layers),
        )
    raise ValueError(f"unknown pico kind {kind!r}; choose one of {', '.join(KINDS)}")


def build_model(kind: str, *, seed: int, num_layers: int | None = None):
    """A freshly initialised fp32 model; the caller's global RNG state is left untouched."""
    from transformers import AutoModelForCausalLM

    config = pico_config(kind, num_layers)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model.eval()


def build_tokenizer():
    """A byte-level BPE tokenizer of exactly VOCAB_SIZE entries, trained on CORPUS."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS[UNK_ID]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    bos = SPECIAL_TOKENS[BOS_ID]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, BOS_ID)]
    )
    if tok.get_vocab_size() > VOCAB_SIZE:  # config vocab below tokenizer size breaks embeddings
        raise AssertionError(f"pico tokenizer has {tok.get_vocab_size()} tokens > {VOCAB_SIZE}")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token=SPECIAL_TOKENS[UNK_ID],
        bos_token=bos,
        eos_token=SPECIAL_TOKENS[EOS_ID],
        pad_token=SPECIAL_TOKENS[PAD_ID],
        chat_template=CHAT_TEMPLATE,
    )


def _unique_nbytes(model) -> list[int]:
    """Byte sizes of the tensors save_pretrained writes (tied tensors counted once)."""
    seen: dict[int, int] = {}
    for tensor in model.state_dict().values():
        seen.setdefault(tensor.untyped_storage().data_ptr(), tensor.numel() * tensor.element_size())
    return list(seen.values())


def _max_shard_size(model, shards: int) -> int:
    """A size for which save_pretrained's greedy sharding yields exactly ``shards`` files.

    Greedy filling closes a shard holding more than ``M - largest`` bytes, so ``shards`` files
    suffice when ``M >= (total + (shards - 1) * largest) / shards``, and ``shards - 1`` do not
    when ``(shards - 1) * M < total``.
    """
    sizes = _unique_nbytes(model)
    total, largest = sum(sizes), max(sizes)
    size = math.ceil((total + (shards - 1) * largest) / shards)
    if (shards - 1) * size >= total:
        raise ValueError(f"a pico model of {total} bytes cannot be split into {shards} shards")
    return size


def save_model(model, path: Path, *, shards: int = 1, dtype: torch.dtype = torch.float32) -> Path:
    """Write ``model`` (cast to ``dtype``) plus tokenizer and generation config into ``path``."""
    path = Path(path)
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    model = model.to(dtype)
    kwargs = {} if shards == 1 else {"max_shard_size": _max_shard_size(model, shards)}
    model.save_pretrained(path, safe_serialization=True, **kwargs)
    model.generation_config.save_pretrained(path)  # already written by transformers 5; be explicit
    build_tokenizer().save_pretrained(path)
    written = sorted(path.glob("*.safetensors"))
    if len(written) != shards:
        raise AssertionError(f"{path}: asked for {shards} shards, save_pretrained wrote {len(written)}")
    return path


def make_pico(
    kind: str,
    path: Path,
    *,
    seed: int,
    num_layers: int | None = None,
    shards: int = 1,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Build, initialise from ``seed`` and save one pico model of ``kind`` into ``path``."""
    return save_model(build_model(kind, seed=seed, num_layers=num_layers), path, shards=shards, dtype=dtype)


def perturb_(model, generator: torch.Generator, scale: float = FINETUNE_SCALE) -> None:
    """In place: p += scale * randn for every floating parameter (tied ones once)."""
    with torch.no_grad():
        for _, param in sorted(model.named_parameters()):
            if param.is_floating_point():
                param.add_(scale * torch.randn(param.shape, generator=generator, dtype=param.dtype))


def make_family(kind: str, root: Path, *, n_finetunes: int = 2, seed: int = 0, **kw) -> list[Path]:
    """``root/base`` and ``root/ft1..ftN``; ft i = base + FINETUNE_SCALE * randn seeded (seed, i).

    ``kw`` goes to save_model / build_model: ``num_layers``, ``shards``, ``dtype``.
    """
    root = Path(root)
    num_layers = kw.pop("num_layers", None)
    paths = [save_model(build_model(kind, seed=seed, num_layers=num_layers), root / "base", **kw)]
    for i in range(1, n_finetunes + 1):
        model = build_model(kind, seed=seed, num_layers=num_layers)
        # A generator of its own per fine-tune: deltas differ between fine-tunes and do not
        # depend on how many fine-tunes were asked for.
        perturb_(model, torch.Generator().manual_seed(seed * 1_000_003 + i))
        paths.append(save_model(model, root / f"ft{i}", **kw))
    return paths
