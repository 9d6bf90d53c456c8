"""Hugging Face directory → float GGUF (F32 / F16 / BF16) through llama.cpp's own converter.

The converter runs as a child of this Python (``_run_converter.py`` says why). Its log names
each tensor as it prepares it (``blk.0.attn_q.weight, torch.float32 --> F16, shape = ...``),
which drives the progress callback; a failure surfaces as one error with the converter's own
last words. When the converter does not recognise the BPE pre-tokenizer, the name derived from
tokenizer.json (``pretok.py``) is used and a warning says so.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import warnings
from collections import deque
from collections.abc import Callable
from pathlib import Path

from mergesmith.errors import ArchitectureError, InputFormatError
from mergesmith.gguf.converter import ensure_converter
from mergesmith.gguf.layouts import CHECKS
from mergesmith.gguf.pretok import pre_tokenizer_for_dir

RUNNER = Path(__file__).with_name("_run_converter.py")
MARKER = "mergesmith-pre-tokenizer:"  # the runner's announcement (kept in step with _run_converter.MARKER)

# config.json "architectures" → the family name users know. Each one is converted by llama.cpp
# and its logits checked against transformers' here (tests/gguf); others may convert but are
# refused rather than untested (README: Architectures lists them with the reason).
SUPPORTED = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "PhiForCausalLM": "phi-2",
    "Gemma3ForCausalLM": "gemma3",
    "Qwen3ForCausalLM": "qwen3",
    "Phi3ForCausalLM": "phi3",
    "GemmaForCausalLM": "gemma",
    "Gemma2ForCausalLM": "gemma2",
    "Starcoder2ForCausalLM": "starcoder2",
    "StableLmForCausalLM": "stablelm",
    "GPT2LMHeadModel": "gpt2",
    "GPTNeoXForCausalLM": "gpt_neox",
    "MixtralForCausalLM": "mixtral",
    "Qwen2MoeForCausalLM": "qwen2_moe",
    "Qwen3MoeForCausalLM": "qwen3_moe",
    "ApertusForCausalLM": "apertus",
    "ArceeForCausalLM": "arcee",
    "CohereForCausalLM": "cohere",
    "Cohere2ForCausalLM": "cohere2",
    "FalconForCausalLM": "falcon",
    "GPTBigCodeForCausalLM": "gpt_bigcode",
    "GraniteForCausalLM": "granite",
    "MambaForCausalLM": "mamba",
    "Olmo2ForCausalLM": "olmo2",
    "BloomForCausalLM": "bloom",
    "Ernie4_5ForCausalLM": "ernie4_5",
    "FalconMambaForCausalLM": "falcon_mamba",
    "Jais2ForCausalLM": "jais2",
    "NemotronForCausalLM": "nemotron",
    "OlmoForCausalLM": "olmo",
    "Olmo3ForCausalLM": "olmo3",
    "SeedOssForCausalLM": "seed_oss",
    "SmolLM3ForCausalLM": "smollm3",
    "Lfm2ForCausalLM": "lfm2",
    "Glm4ForCausalLM": "glm4",
    "Exaone4ForCausalLM": "exaone4",
    "Mamba2ForCausalLM": "mamba2",
    "FalconH1ForCausalLM": "falcon_h1",
    "HunYuanDenseV1ForCausalLM": "hunyuan_v1_dense",
}
_TENSOR_LINE = re.compile(r"^INFO:hf-to-gguf:(\S+?),?\s+torch\.\w+ --> \w+, shape")
_ERROR_LINE = re.compile(r"^(\w+(Error|Exception)|ERROR:)")


def model_config(model_dir: Path) -> dict:
    path = Path(model_dir) / "config.json"
    if not Path(model_dir).is_dir():
        raise InputFormatError(
            f"model directory {model_dir} not found; give a Hugging Face model directory (a merge output)"
        )
    if not path.is_file():
        raise InputFormatError(
            f"{path} is missing; GGUF export reads Hugging Face model directories with a config.json"
        )
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise InputFormatError(f"{path} is not valid JSON ({exc}); rewrite it or re-run the merge") from exc


def check_architecture(model_dir: Path) -> str:
    """The family of ``model_dir`` if GGUF export supports it, else an ArchitectureError naming those it does."""
    config = model_config(model_dir)
    archs = config.get("architectures") or []
    for arch in archs:
        if arch in SUPPORTED:
            family = SUPPORTED[arch]
            if family in CHECKS:
                CHECKS[family](config, Path(model_dir) / "config.json")
            return family
    names = ", ".join(f"{family} ({arch})" for arch, family in SUPPORTED.items())
    found = ", ".join(map(str, archs)) or "no 'architectures' entry"
    raise ArchitectureError(
        f"{Path(model_dir) / 'config.json'}: {found} cannot be exported to GGUF; supported architectures: {names}"
    )


def check_weights(model_dir: Path) -> None:
    """The converter writes a GGUF without a single tensor from a directory without weights."""
    if not any(Path(model_dir).glob("*.safetensors")) and not any(Path(model_dir).glob("*.bin")):
        raise InputFormatError(
            f"model directory {model_dir} has no .safetensors (or .bin) weights; "
            "give a complete Hugging Face model directory (a merge output)"
        )


def count_tensors(model_dir: Path) -> int | None:
    """Tensors in the safetensors checkpoint (the progress total), or None if there are none to read.

    An unreadable file only costs the bar its total: the converter reads it next and says what is wrong.
    """
    from safetensors import SafetensorError, safe_open

    total = 0
    for file in sorted(Path(model_dir).glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as f:
                total += len(list(f.keys()))
        except (OSError, SafetensorError):
            return None
    return total or None


def _failure(model_dir: Path, outtype: str, lines) -> InputFormatError:
    lines = [line for line in lines if line.strip()]
    errors = [line for line in lines if _ERROR_LINE.match(line)]
    last = (errors or lines or ["no output"])[-1].strip()
    return InputFormatError(f"llama.cpp's converter could not write {outtype} GGUF from {model_dir}: {last}")


def convert_to_gguf(
    model_dir: Path,
    out_path: Path,
    outtype: str,
    *,
    converter: Path | None = None,
    on_tensor: Callable[[str], None] | None = None,
) -> None:
    """Write ``out_path`` as ``outtype`` (f32, f16 or bf16) GGUF of the HF model in ``model_dir``."""
    model_dir, out_path = Path(model_dir), Path(out_path)
    converter = ensure_converter(converter)
    check_architecture(model_dir)
    pre = pre_tokenizer_for_dir(model_dir) or "-"
    cmd = [
        sys.executable,
        str(RUNNER),
        str(converter),
        pre,
        str(model_dir),
        "--outtype",
        outtype,
        "--outfile",
        str(out_path),
    ]
    tail: deque = deque(maxlen=60)
    fallback = None
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace") as proc:
        try:
            for line in proc.stdout:
                tail.append(line.rstrip("\n"))
                if line.startswith(MARKER):
                    fallback = line[len(MARKER) :].strip()
                elif on_tensor and (m := _TENSOR_LINE.match(line)):
                    on_tensor(m.group(1))
        except BaseException:
            # Ctrl-C (or a failing callback): stop the converter before the caller removes its
            # partial file, or the child would go on writing a file nobody will rename.
            proc.kill()
            raise
    if proc.returncode != 0 or not out_path.is_file():
        out_path.unlink(missing_ok=True)
        raise _failure(model_dir, outtype, tail)
    if fallback:
        warnings.warn(
            f"{model_dir / 'tokenizer.json'}: llama.cpp's converter does not know this tokenizer's pre-tokenizer hash; "
            f"its pre_tokenizer splits text as llama.cpp's '{fallback}' does, so the GGUF names that one",
            stacklevel=2,
        )
