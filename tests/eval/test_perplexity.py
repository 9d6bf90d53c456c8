"""Perplexity and KL divergence against direct transformers computations on pico models."""

from __future__ import annotations

import math
import shutil

import pytest
import torch
from pico import BOS_ID

from mergesmith.errors import ArchitectureError, ConfigError
from mergesmith.eval import evaluate
from mergesmith.eval.models import load_model
from mergesmith.eval.perplexity import Window, score_ids, token_ids, windows

NOISE_SCALES = (1e-4, 1e-3, 1e-2, 3e-2)  # the scales of the noisy_llamas fixture


def _hf(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(path)


def _direct_ids(tok, text: str) -> torch.Tensor:
    return torch.tensor([[BOS_ID] + tok(text, add_special_tokens=False).input_ids])


# --- windows ---------------------------------------------------------------------------------


def test_windows_example():
    assert windows(10, 4, 2) == (Window(0, 4, 1), Window(2, 6, 4), Window(4, 8, 6), Window(6, 10, 8))
    # the last window keeps the full context instead of shrinking
    assert windows(9, 4, 3) == (Window(0, 4, 1), Window(3, 7, 4), Window(5, 9, 7))
    assert windows(3, 8, 4) == (Window(0, 3, 1),)


@pytest.mark.parametrize("n,context,stride", [(2, 2, 1), (100, 16, 5), (101, 16, 15), (64, 64, 32), (1000, 37, 1)])
def test_windows_score_every_token_once_with_enough_context(n, context, stride):
    plan = windows(n, context, stride)
    scored = [i for w in plan for i in range(w.first, w.end)]
    assert scored == list(range(1, n))
    assert {w.end - w.start for w in plan} == {min(n, context)}
    for w in plan[1:]:
        assert w.first - w.start >= context - stride


@pytest.mark.parametrize("context,stride", [(8, 8), (8, 0), (1, 1), (8, 9)])
def test_bad_window_settings_are_config_errors(context, stride):
    with pytest.raises(ConfigError, match="stride"):
        windows(100, context, stride)


# --- perplexity --------------------------------------------------------------------------------


def test_single_window_perplexity_equals_transformers_loss(llama_family, eval_text):
    text = "The quick brown fox jumps over the lazy dog. Hello world!"
    model, tok = _hf(llama_family[0])
    ids = _direct_ids(tok, text)
    with torch.no_grad():
        loss = model(ids, labels=ids).loss.item()  # mean NLL of tokens 1..n-1 given all before
    path = eval_text.with_name("short.txt")
    path.write_text(text, encoding="utf-8")
    score = evaluate([llama_family[0]], texts=[path], tasks=[], context=64).models[0].texts[0]
    assert score.tokens == ids.shape[1] - 1
    assert score.nll == pytest.approx(loss, rel=1e-6)
    assert score.ppl == pytest.approx(math.exp(loss), rel=1e-6)
    assert score.bytes == len(text.encode("utf-8"))
    assert score.bits_per_byte == pytest.approx(loss * score.tokens / math.log(2) / score.bytes, rel=1e-6)


def test_sliding_window_perplexity_equals_a_direct_loop(llama_family, eval_text):
    """The same numbers from transformers' own loss, window by window (the HF perplexity guide)."""
    context, stride = 64, 24
    model, tok = _hf(llama_family[1])
    ids = _direct_ids(tok, eval_text.read_text())
    n = ids.shape[1]
    total, count, prev_end, end = 0.0, 0, 1, min(n, context)
    while True:
        window = ids[:, max(0, end - context) : end]
        labels = window.clone()
        labels[:, : window.shape[1] - (end - prev_end)] = -100  # score only the new tokens
        with torch.no_grad():
            loss = model(window, labels=labels).loss.item()
        total += loss * (end - prev_end)
        count += end - prev_end
        if end == n:
            break
        prev_end, end = end, min(n, end + stride)
    assert count == n - 1 and n > 4 * context
    for batch_size in (1, 3):
        score = (
            evaluate(
                [llama_family[1]], texts=[eval_text], tasks=[], context=context, stride=stride, batch_size=batch_size
            )
            .models[0]
            .texts[0]
        )
        assert score.tokens == count
        assert score.nll == pytest.approx(total / count, rel=1e-6)


def test_limit_scores_the_first_windows_only(llama_family, eval_text):
    full = evaluate([llama_family[0]], texts=[eval_text], tasks=[], context=64, stride=32).models[0].texts[0]
    part = evaluate([llama_family[0]], texts=[eval_text], tasks=[], context=64, stride=32, limit=2).models[0].texts[0]
    assert part.tokens == 63 + 32
    assert 0 < part.bytes < full.bytes


# --- KL divergence -----------------------------------------------------------------------------


def test_kl_of_a_model_with_itself_is_zero(llama_family, eval_text, tmp_path):
    twin = shutil.copytree(llama_family[0], tmp_path / "twin")
    result = evaluate([twin], ref=llama_family[0], texts=[eval_text], tasks=[], context=64)
    base, other = result.models
    assert base.is_ref and base.texts[0].kl is None
    kl = other.texts[0].kl
    assert (kl.mean, kl.p90, kl.p99, kl.top1, kl.delta_ppl) == (0.0, 0.0, 0.0, 1.0, 0.0)
    assert other.texts[0].ppl == base.texts[0].ppl


def test_kl_matches_torch_kl_div_on_full_logits(noisy_llamas, eval_text):
    base, other = load_model(str(noisy_llamas[0.0])), load_model(str(noisy_llamas[1e-2]))
    ids = token_ids(base, "Hello world! How are you today? I am fine.")
    sums = score_ids(other, ids, ref=base, context=64, stride=32, batch_size=1)
    with torch.no_grad():
        p = torch.log_softmax(base.model(ids[None]).logits[0, :-1].double(), -1)
        q = torch.log_softmax(other.model(ids[None]).logits[0, :-1].double(), -1)
    want = torch.nn.functional.kl_div(q, p, log_target=True, reduction="none").sum(-1)
    got = torch.cat(sums.kl)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-7)
    assert sums.top1 == int((p.argmax(-1) == q.argmax(-1)).sum())


def test_kl_grows_with_noise(noisy_llamas, eval_text):
    result = evaluate(
        [noisy_llamas[s] for s in NOISE_SCALES], ref=noisy_llamas[0.0], texts=[eval_text], tasks=[], context=64
    )
    kls = [m.texts[0].kl for m in result.models[1:]]
    means = [k.mean for k in kls]
    assert means == sorted(means) and len(set(means)) == len(means)
    assert [k.p99 for k in kls] == sorted(k.p99 for k in kls)
    assert all(k.p90 <= k.p99 for k in kls)
    assert [k.top1 for k in kls] == sorted((k.top1 for k in kls), reverse=True)
    assert kls[0].top1 > 0.9 and kls[-1].top1 < kls[0].top1
    # quadratic regime: 10x the noise, about 100x the KL
    assert 30 < means[1] / means[0] < 300


def test_kl_refuses_different_tokenizers(llama_family, eval_text, tmp_path):
    from transformers import AutoTokenizer

    other = shutil.copytree(llama_family[1], tmp_path / "other-tok")
    tok = AutoTokenizer.from_pretrained(other)
    tok.add_tokens(["zebra-crossing"])
    tok.save_pretrained(other)
    with pytest.raises(ArchitectureError, match="different tokenizers"):
        evaluate([other], ref=llama_family[0], texts=[eval_text], tasks=[], context=64)
