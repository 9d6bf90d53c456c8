"""A GGUF file as a model to score: llama.cpp (through llama-cpp-python) behind the interface of
``LoadedModel``, so perplexity, KL and multiple choice run on it unchanged.

The metrics call ``model(input_ids=[B, T], attention_mask=, logits_to_keep=k).logits`` and a
tokenizer (``__call__``, BOS / EOS / PAD ids, ``decode``, ``get_vocab``). Here each row is run
by llama.cpp alone, from an empty KV cache, with logits kept for every position; right padding
(the only kind the metrics use) is left out of the run and gets zero logits, which no metric
reads. Token ids come from the GGUF's own vocabulary, so every GGUF of one export (F16 and its
quantizations) tokenizes a text identically.
"""

from __future__ import annotations

import ctypes
from collections import OrderedDict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from mergesmith.errors import InputFormatError
from mergesmith.eval.llama_cpp import captured_log, import_llama_cpp
from mergesmith.eval.loaded import LoadedModel

_MIN_CONTEXT = 512  # first llama.cpp context; grown (re-created) when a longer row arrives


def _unreadable(ref: str, why) -> InputFormatError:
    return InputFormatError(
        f"model '{ref}' is not a readable GGUF file ({why}); export it again with `mergesmith export-gguf`, or "
        "evaluate the Hugging Face directory it came from (`mergesmith merge` with a passthrough recipe makes one)"
    )


def check_gguf_file(ref: str) -> Path:
    """``ref`` as a GGUF file (exists, GGUF magic), checked before anything is loaded.

    Only the header is read: parsing the whole metadata (a vocabulary of 50k strings) takes
    seconds, and llama.cpp checks every byte when it loads the file.
    """
    path = Path(ref).expanduser()
    if not path.is_file():
        raise InputFormatError(
            f"model '{ref}' not found: no such GGUF file; give a .gguf file or a Hugging Face model directory"
        )
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise _unreadable(ref, f"it starts with {magic!r}, not b'GGUF'")
    return path


def context_length(ref: str) -> int | None:
    """``<arch>.context_length`` from the GGUF metadata (None when absent), read by llama.cpp.

    The vocabulary-only load takes a tenth of a second where gguf-py's reader, which parses
    every metadata array, takes seconds for a 50k vocabulary.
    """
    path = check_gguf_file(ref)
    llama_cpp = import_llama_cpp()
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    log: list[str] = []
    with captured_log(llama_cpp, log.append):
        model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
    if not model:
        errors = [line for line in log if "error" in line or "failed" in line]
        raise _unreadable(ref, (errors or log or ["llama.cpp could not load it"])[0].strip())
    try:
        value = ctypes.create_string_buffer(64)
        arch = ctypes.create_string_buffer(64)
        if llama_cpp.llama_model_meta_val_str(model, b"general.architecture", arch, len(arch)) < 0:
            return None
        key = f"{arch.value.decode()}.context_length".encode()
        if llama_cpp.llama_model_meta_val_str(model, key, value, len(value)) < 0:
            return None
        return int(value.value)
    finally:
        llama_cpp.llama_model_free(model)


class _Runtime:
    """One llama.cpp model + context with all-position logits; the context grows on demand."""

    def __init__(self, path: Path, threads: int):
        self.llama_cpp = import_llama_cpp()
        self.path, self.threads = path, threads
        self.llm: Any = None
        self.llm = self.sized(_MIN_CONTEXT)

    def sized(self, n_tokens: int):
        if self.llm is None or self.llm.n_ctx() < n_tokens:
            n_ctx = max(_MIN_CONTEXT, -(-n_tokens // 256) * 256)
            self.llm = None  # free the old context first
            log: list[str] = []  # llama.cpp's load log: kept for the error, not printed
            try:
                with captured_log(self.llama_cpp, log.append):
                    self.llm = self.llama_cpp.Llama(
                        model_path=str(self.path),
                        n_ctx=n_ctx,
                        n_batch=n_ctx,
                        logits_all=True,
                        n_threads=self.threads,
                        n_threads_batch=self.threads,
                        verbose=False,
                    )
            except ValueError as exc:
                why = next((line.strip() for line in log if "error" in line), str(exc))
                raise InputFormatError(
                    f"llama.cpp cannot load {self.path} ({why}); export it again with `mergesmith export-gguf`"
                ) from exc
        return self.llm

    def logits(self, ids: list) -> torch.Tensor:
        llm = self.sized(len(ids))
        llm.reset()
        llm.eval(ids)
        return torch.from_numpy(llm.scores[: len(ids)].copy())


class GGUFCausalLM:
    """The forward call of the metrics: ``[B, T]`` ids in, ``.logits`` ``[B, T or keep, V]`` out.

    Results are memoised per row (up to ``CACHE_BYTES``): ``evaluate`` keeps the reference
    loaded and runs it again on the same windows beside every model, and llama.cpp returns the
    same logits for the same tokens, so the reference costs one pass instead of one per model.
    """

    CACHE_BYTES = 1 << 30

    def __init__(self, runtime: _Runtime):
        self.runtime = runtime
        self._cache: OrderedDict = OrderedDict()
        self._cached_bytes = 0

    def _row(self, ids: list, width: int, keep: int) -> torch.Tensor:
        key = (tuple(ids), width, keep)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        logits = self.runtime.logits(ids)
        if len(ids) < width:  # right padding: zero logits that no metric reads
            logits = torch.cat([logits, logits.new_zeros((width - len(ids), logits.shape[1]))])
        tail = logits[-keep:].clone()  # a copy, so that the full [T, V] buffer is freed
        size = tail.numel() * tail.element_size()
        while self._cache and self._cached_bytes + size > self.CACHE_BYTES:
            _, old = self._cache.popitem(last=False)
            self._cached_bytes -= old.numel() * old.element_size()
        if size <= self.CACHE_BYTES:
            self._cache[key] = tail
            self._cached_bytes += size
        return tail

    def __call__(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        use_cache: bool = False,
        logits_to_keep: int = 0,
    ) -> SimpleNamespace:
        width = input_ids.shape[1]
        keep = logits_to_keep or width
        rows = []
        for r in range(input_ids.shape[0]):
            n = width if attention_mask is None else int(attention_mask[r].sum())
            rows.append(self._row(input_ids[r, :n].tolist(), width, keep))
        return SimpleNamespace(logits=torch.stack(rows))


class GGUFTokenizer:
    """The GGUF's vocabulary, tokenized and detokenized by llama.cpp."""

    def __init__(self, runtime: _Runtime):
        self.runtime = runtime
        llm = runtime.llm
        self.bos_token_id = self._id(llm.token_bos())
        self.eos_token_id = self._id(llm.token_eos())
        self.pad_token_id = None

    @staticmethod
    def _id(token: int) -> int | None:
        return None if token is None or token < 0 else int(token)

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        ids = self.runtime.llm.tokenize(text.encode("utf-8"), add_bos=add_special_tokens, special=False)
        return {"input_ids": list(ids)}

    def decode(self, ids) -> str:
        return self.runtime.llm.detokenize(list(ids)).decode("utf-8", errors="replace")

    def get_vocab(self) -> dict:
        model = self.runtime.llm._model  # llama-cpp-python's model wrapper: token texts by id
        return {model.token_get_text(i): i for i in range(self.runtime.llm.n_vocab())}


# One llama.cpp thread by default. Its CPU backend runs under OpenMP, whose idle workers spin
# between the hundreds of barriers of a forward pass, and torch (imported first) has already
# started the OpenMP runtime with spinning on. Wherever the cores are shared (CI runners, a
# busy machine), 2 threads ran SmolLM2-135M at 20-40 tokens/s where 1 thread ran 115-120.
DEFAULT_THREADS = 1


def load_gguf(ref: str, threads: int = DEFAULT_THREADS) -> LoadedModel:
    """``ref`` (a .gguf file) loaded by llama.cpp on the CPU, with ``threads`` threads."""
    path = check_gguf_file(ref)
    runtime = _Runtime(path, threads)
    return LoadedModel(ref, GGUFCausalLM(runtime), GGUFTokenizer(runtime), torch.device("cpu"), keeps_logits=True)
