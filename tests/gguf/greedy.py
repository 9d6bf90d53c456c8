"""Greedy continuations by llama.cpp and by transformers, for comparing a GGUF with its HF model."""

from __future__ import annotations

import torch


def greedy_llama_cpp(path, ids: list, n: int) -> list:
    """Greedy continuation by llama.cpp: argmax of the last logits, appended, n times."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, logits_all=True, n_threads=1, verbose=False)
    llm.eval(ids)
    out = []
    for _ in range(n):
        token = int(llm.scores[llm.n_tokens - 1].argmax())
        out.append(token)
        llm.eval([token])
    return out


def greedy_transformers(model_dir, ids: list, n: int) -> list:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return out[0, len(ids) :].tolist()
