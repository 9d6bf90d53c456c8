"""Loading a Hugging Face model directory for scoring, and the one forward pass every metric uses."""

from __future__ import annotations

import inspect
import json
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError

from mergesmith.errors import (
    ArchitectureError,
    ConfigError,
    InputFormatError,
    MergesmithError,
)
from mergesmith.eval.loaded import LoadedModel  # noqa: F401  (re-exported: the metrics import it from here)
from mergesmith.execute.device import check_device as device_for

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ConfigError(f"dtype '{name}' is not supported for evaluation; use one of {', '.join(DTYPES)}")
    return DTYPES[name]


def check_device(name: str) -> torch.device:
    """The evaluation device: the merge's rule (execute/device.py), with Apple's mps allowed too."""
    return torch.device(device_for(name, kinds=("cpu", "cuda", "mps")))


def is_gguf(ref: str) -> bool:
    """A .gguf file is scored through llama.cpp (``gguf_model``), anything else as an HF directory."""
    return Path(ref).suffix == ".gguf"


def check_model_dir(ref: str) -> Path:
    """The model directory of ``ref`` (a local HF directory or a .gguf file), checked before anything is loaded."""
    path = Path(ref).expanduser()
    if is_gguf(ref):
        from mergesmith.eval.gguf_model import check_gguf_file

        return check_gguf_file(ref)
    if path.is_dir() and any(path.glob("*.gguf")) and not (path / "config.json").exists():
        raise InputFormatError(f"model '{ref}' is a folder of GGUF files; pass the .gguf file to evaluate")
    if not path.is_dir():
        raise InputFormatError(f"model '{ref}' not found: no such directory; give a local Hugging Face model directory")
    if not (path / "config.json").is_file():
        raise InputFormatError(
            f"model '{ref}': {path / 'config.json'} is missing; a model directory needs its config.json"
        )
    return path


def max_positions(ref: str) -> int | None:
    """``max_position_embeddings`` from config.json (None when the config does not say)."""
    if is_gguf(ref):
        from mergesmith.eval.gguf_model import context_length

        return context_length(ref)
    path = check_model_dir(ref) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:  # UnicodeDecodeError included
        raise InputFormatError(
            f"model '{ref}': {path} is not valid JSON ({exc}); repair it or re-save the model"
        ) from None
    config = config.get("text_config", config) if isinstance(config, dict) else None
    if not isinstance(config, dict):
        raise InputFormatError(f"model '{ref}': {path} is not a JSON object; repair it or re-save the model")
    value = config.get("max_position_embeddings")
    return int(value) if isinstance(value, int) else None


@contextmanager
def _quiet_transformers(progress: bool):
    """transformers draws its own 'Loading weights' bar (shown only if progress was asked for) and
    logs a multi-line load report; mismatches are turned into one error below, so it is silenced."""
    from transformers.utils import logging as hf_logging

    bar, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    (hf_logging.enable_progress_bar if progress else hf_logging.disable_progress_bar)()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        (hf_logging.enable_progress_bar if bar else hf_logging.disable_progress_bar)()
        hf_logging.set_verbosity(verbosity)


def _check_loading(ref: str, info: dict) -> None:
    """What transformers only warns about: a tensor of the wrong shape, or one the checkpoint lacks
    (left randomly initialised, it would make every score meaningless)."""
    for name, in_file, in_model in sorted(info.get("mismatched_keys") or ()):
        raise InputFormatError(
            f"model '{ref}': tensor {name} has shape {list(in_file)} in the checkpoint but "
            f"{list(in_model)} by its config.json; the two disagree: re-save the model"
        )
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise InputFormatError(
            f"model '{ref}': the checkpoint has no tensor {missing[0]}{more}, which its config.json "
            "needs; the model files are incomplete: re-save or re-download it"
        )


def _check_remote_code(ref: str, path: Path, trust_remote_code: bool) -> None:
    """A model whose class transformers lacks and whose config points to code shipped with it
    (``auto_map``) runs that code only when the user says so."""
    from transformers import CONFIG_MAPPING

    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # transformers names the problem when it loads the model
    auto_map = config.get("auto_map") if isinstance(config, dict) else None
    if trust_remote_code or not isinstance(auto_map, dict) or config.get("model_type") in CONFIG_MAPPING:
        return
    modules = sorted({str(v).rsplit(".", 1)[0] for v in auto_map.values() if isinstance(v, str)})
    raise InputFormatError(
        f"model '{ref}': its class ({config.get('model_type')}) is code shipped with the model "
        f"({', '.join(modules)}.py), which transformers runs only when trusted; pass --trust-remote-code "
        "if you trust its source"
    )


def load_model(
    ref: str, dtype: str = "float32", device: str = "cpu", progress: bool = False, trust_remote_code: bool = False
) -> LoadedModel:
    """``trust_remote_code``: load a model whose class ships with it (config.json ``auto_map``),
    running that code; otherwise such a model is refused with one line."""
    if is_gguf(ref):  # llama.cpp on the CPU: the GGUF's own tensor types, whatever dtype / device say
        from mergesmith.eval.gguf_model import load_gguf

        return load_gguf(ref)
    path = check_model_dir(ref)
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise MergesmithError(
            f"evaluating '{ref}' needs transformers ({exc}); install it: pip install 'mergesmith[hf]'"
        ) from exc
    _check_remote_code(ref, Path(path), trust_remote_code)
    remote = {"trust_remote_code": True} if trust_remote_code else {}
    try:
        with _quiet_transformers(progress):
            tokenizer = AutoTokenizer.from_pretrained(path, **remote)
            model, info = AutoModelForCausalLM.from_pretrained(
                path, dtype=torch_dtype(dtype), output_loading_info=True, ignore_mismatched_sizes=True, **remote
            )
    except (OSError, ValueError, KeyError, SafetensorError) as exc:  # SafetensorError: a truncated or corrupt file
        why = str(exc).replace("\n", " ")
        raise InputFormatError(
            f"model '{ref}' does not load with transformers: {why}; re-save or re-download it"
        ) from exc
    _check_loading(ref, info)
    dev = check_device(device)
    model = model.to(dev).eval()
    keeps = "logits_to_keep" in inspect.signature(model.forward).parameters
    return LoadedModel(ref, model, tokenizer, dev, keeps)


def check_same_tokenizer(model: LoadedModel, ref: LoadedModel) -> None:
    """KL divergence compares distributions over the same token ids: the vocabularies must match."""
    if model.tokenizer.get_vocab() != ref.tokenizer.get_vocab():
        raise ArchitectureError(
            f"model '{model.name}' and reference '{ref.name}' have different tokenizers; KL divergence needs "
            "identical token ids: pick a reference with the same tokenizer or drop --ref"
        )


def doc_start_id(loaded: LoadedModel) -> int:
    """The token a document starts after: BOS, else EOS (so that the first text token is scored too)."""
    tok = loaded.tokenizer
    token = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    if token is None:
        raise InputFormatError(
            f"model '{loaded.name}': the tokenizer has neither a BOS nor an EOS token; perplexity needs one to start a document"
        )
    return int(token)


def tail_logprobs(loaded: LoadedModel, ids: torch.Tensor, keep: int, attention_mask=None) -> torch.Tensor:
    """log-softmax (float32) of the next-token logits at the last ``keep`` positions: [B, keep, V]."""
    kwargs = {"logits_to_keep": keep} if loaded.keeps_logits else {}
    ids = ids.to(loaded.device)
    mask = None if attention_mask is None else attention_mask.to(loaded.device)
    logits = loaded.model(input_ids=ids, attention_mask=mask, use_cache=False, **kwargs).logits
    return torch.log_softmax(logits[:, -keep:].float(), dim=-1)
