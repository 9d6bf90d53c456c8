"""Perplexity with a sliding window, and KL divergence against a reference on the same token ids.

A text becomes ``T = [doc_start] + tokens`` (doc_start: BOS, else EOS), so every text token is
scored. Windows of ``context`` tokens end ``stride`` tokens apart; each window scores only the
tokens the previous one did not, so every scored token (after the first window) sees at least
``context - stride`` tokens before it:

    nll   = -1/N sum_i log p(T_i | T_<i in its window)          ppl = exp(nll)
    bpb   = N * nll / ln 2 / bytes(text)                          (bits per UTF-8 byte)
    KL_i  = sum_v p_ref(v) (log p_ref(v) - log p_model(v))        (llama.cpp's KL(base || model))
    top-1 = share of positions where argmax p_model = argmax p_ref
    Δppl  = ppl(model) - ppl(ref)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from mergesmith.errors import ConfigError
from mergesmith.eval.models import LoadedModel, doc_start_id, tail_logprobs
from mergesmith.eval.results import KLScore, TextScore


@dataclass(frozen=True)
class Window:
    start: int  # the window is T[start:end]
    end: int
    first: int  # it scores targets T[first:end]


def windows(n: int, context: int, stride: int) -> tuple[Window, ...]:
    """Windows over ``n`` tokens (doc_start included): all of length min(context, n)."""
    if context < 2 or not 1 <= stride < context:
        raise ConfigError(
            f"context {context}, stride {stride}: need context >= 2 and 1 <= stride < context (a window must keep one token of context)"
        )
    out, end = [], 1
    while end < n:
        new_end = min(n, context if not out else end + stride)
        out.append(Window(max(0, new_end - context), new_end, end))
        end = new_end
    return tuple(out)


@dataclass
class _Sums:
    """Running totals of one text pass (float64 sums; per-position KL kept for percentiles)."""

    nll: float = 0.0
    ref_nll: float = 0.0
    tokens: int = 0
    top1: int = 0
    kl: list = None
    windows: list = None  # (nll sum, tokens) of each window, in order

    def __post_init__(self):
        self.kl = []
        self.windows = []


def _batch_step(
    sums: _Sums, model: LoadedModel, ref: LoadedModel | None, ids: torch.Tensor, batch: list[Window]
) -> None:
    keep = max(w.end - w.first for w in batch) + 1
    inputs = torch.stack([ids[w.start : w.end] for w in batch])
    logp = tail_logprobs(model, inputs, keep)[:, :-1]  # predictions for the last keep-1 tokens
    ref_logp = None if ref is None else tail_logprobs(ref, inputs, keep)[:, :-1]
    targets = inputs[:, -(keep - 1) :].to(logp.device)
    for row, w in enumerate(batch):
        n = w.end - w.first  # this window scores its last n tokens
        tgt = targets[row, -n:].unsqueeze(-1)
        lp = logp[row, -n:]
        window_nll = -lp.gather(-1, tgt).double().sum().item()
        sums.nll += window_nll
        sums.tokens += n
        sums.windows.append((window_nll, n))
        if ref_logp is not None:
            rlp = ref_logp[row, -n:]
            sums.ref_nll -= rlp.gather(-1, tgt).double().sum().item()
            sums.kl.append(torch.sum(rlp.exp() * (rlp - lp), dim=-1).double().cpu())
            sums.top1 += int((lp.argmax(-1) == rlp.argmax(-1)).sum())


def token_ids(model: LoadedModel, text: str) -> torch.Tensor:
    """``[doc_start] + tokens(text)`` as a 1-D long tensor."""
    ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
    return torch.tensor([doc_start_id(model)] + list(ids), dtype=torch.long)


def score_ids(
    model: LoadedModel,
    ids: torch.Tensor,
    *,
    context: int,
    stride: int,
    batch_size: int,
    ref: LoadedModel | None = None,
    limit: int | None = None,
    on_window: Callable[[int], None] | None = None,
    skip: int = 0,
) -> _Sums:
    """Totals over the windows of ``ids`` (the first ``limit`` windows when given, less the first ``skip``)."""
    plan = windows(len(ids), context, stride)[skip:limit]
    sums = _Sums()
    with torch.no_grad():
        for i in range(0, len(plan), batch_size):
            batch = list(plan[i : i + batch_size])
            _batch_step(sums, model, ref, ids, batch)
            if on_window:
                on_window(len(batch))
    return sums


def scored_bytes(model: LoadedModel, ids: torch.Tensor, tokens: int, text: str) -> int:
    """UTF-8 bytes of the scored tokens: the whole text, or the decoded prefix a limit stopped at."""
    if tokens == len(ids) - 1:
        return len(text.encode("utf-8"))
    return len(model.tokenizer.decode(ids[1 : tokens + 1].tolist()).encode("utf-8"))


def text_score(
    name: str, path: str, text: str, ids: torch.Tensor, sums: _Sums, model: LoadedModel, ref_name: str | None
) -> TextScore:
    nll = sums.nll / sums.tokens
    nbytes = scored_bytes(model, ids, sums.tokens, text)
    kl = None
    if ref_name is not None:
        per_token = torch.cat(sums.kl)
        q = torch.quantile(per_token, torch.tensor([0.9, 0.99], dtype=torch.float64)).tolist()
        kl = KLScore(
            ref=ref_name,
            mean=float(per_token.mean()),
            p90=q[0],
            p99=q[1],
            top1=sums.top1 / sums.tokens,
            delta_ppl=math.exp(nll) - math.exp(sums.ref_nll / sums.tokens),
        )
    return TextScore(
        text=name,
        path=path,
        tokens=sums.tokens,
        bytes=nbytes,
        nll=nll,
        ppl=math.exp(nll),
        bits_per_byte=sums.nll / math.log(2) / nbytes,
        kl=kl,
    )
