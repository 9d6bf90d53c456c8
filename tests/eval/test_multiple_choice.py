"""Multiple choice on pico models whose preferences are fixed by construction."""

from __future__ import annotations

import json
import math

import pytest
import torch
from pico import VOCAB_SIZE, build_model, build_tokenizer, save_model

from mergesmith.eval import evaluate
from mergesmith.eval.choice import _loglikelihoods, _sequences
from mergesmith.eval.data import Item, Task, fewshot_prefix, prompt, read_task
from mergesmith.eval.models import load_model


def write_task(path, items) -> str:
    path.write_text("".join(json.dumps(dict(zip(("question", "choices", "answer"), i))) + "\n" for i in items))
    return str(path)


@pytest.fixture(scope="module")
def sea_lover(tmp_path_factory):
    """A phi-2 pico whose lm_head ignores the input and puts +30 on the token ' sea'."""
    sea = build_tokenizer()(" sea", add_special_tokens=False).input_ids
    assert len(sea) == 1
    model = build_model("phi2", seed=5)
    with torch.no_grad():
        model.lm_head.weight.zero_()
        model.lm_head.bias.zero_()
        model.lm_head.bias[sea[0]] = 30.0
    return save_model(model, tmp_path_factory.mktemp("sea") / "model")


@pytest.fixture(scope="module")
def uniform(tmp_path_factory):
    """A llama pico with a zero lm_head: every token has probability 1 / VOCAB_SIZE."""
    model = build_model("llama", seed=6)
    with torch.no_grad():
        model.lm_head.weight.zero_()
    return save_model(model, tmp_path_factory.mktemp("uniform") / "model")


def test_the_forced_choice_wins(sea_lover, tmp_path):
    items = [
        ("Where do fish live?", ["dog", "sea", "fox"], 1),
        ("Pick one.", ["sea", "fox"], 0),
        ("Which animal barks?", ["dog", "fox", "sea"], 0),  # the model answers 'sea': wrong
    ]
    task = write_task(tmp_path / "sea.jsonl", items)
    for fewshot in (0, 2):
        score = evaluate([sea_lover], tasks=[task], context=128, fewshot=fewshot).models[0].tasks[0]
        assert (score.items, score.fewshot) == (3, fewshot)
        assert score.acc == pytest.approx(2 / 3) and score.acc_norm == pytest.approx(2 / 3)
        assert score.acc_stderr == pytest.approx(math.sqrt(2 / 9 / 3))
        assert score.chance == pytest.approx((1 / 3 + 1 / 2 + 1 / 3) / 3)


def test_uniform_model_separates_acc_from_acc_norm(uniform, tmp_path):
    """Uniform: log-likelihood = -tokens * ln V, so acc picks the fewest tokens and acc_norm the
    most bytes per token. ' sea' is 1 token / 4 bytes, ' sea shells' 2 tokens / 11 bytes."""
    tok = build_tokenizer()
    assert [len(tok(s, add_special_tokens=False).input_ids) for s in (" sea", " sea shells")] == [1, 2]
    task = write_task(tmp_path / "u.jsonl", [("Q?", ["sea", "sea shells"], 0), ("Q!", ["sea", "sea shells"], 1)] * 2)
    score = evaluate([uniform], tasks=[task], context=128).models[0].tasks[0]
    assert (score.acc, score.acc_norm) == (0.5, 0.5)
    loaded = load_model(str(uniform))
    seqs = _sequences(loaded, read_task(task), 0, 128, None)
    with torch.no_grad():
        values = _loglikelihoods(loaded, seqs, pad_id=0)
    assert values == pytest.approx([-s.n_choice * math.log(VOCAB_SIZE) for s in seqs], rel=1e-5)
    assert [s.n_choice for s in seqs[:2]] == [1, 2]


def test_padded_batches_give_the_same_loglikelihoods(llama_family, tmp_path):
    items = [
        ("How many legs do horses have?", ["four", "two", "none at all"], 0),
        ("Hello", ["world", "there, how are you today?"], 0),
    ]
    loaded = load_model(str(llama_family[1]))
    seqs = _sequences(loaded, read_task(write_task(tmp_path / "t.jsonl", items)), 0, 128, None)
    assert len({len(s.ids) for s in seqs}) > 1  # the batch really is padded
    with torch.no_grad():
        together = _loglikelihoods(loaded, seqs, pad_id=3)
        alone = [_loglikelihoods(loaded, [s], pad_id=3)[0] for s in seqs]
    assert together == pytest.approx(alone, rel=1e-5)
    assert len(set(alone)) == len(alone)


def test_choice_loglikelihood_equals_a_direct_computation(llama_family, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    task = read_task(write_task(tmp_path / "t.jsonl", [("How many legs do horses have?", ["four", "two"], 0)]))
    loaded = load_model(str(llama_family[2]))
    with torch.no_grad():
        got = _loglikelihoods(loaded, _sequences(loaded, task, 0, 128, None), pad_id=3)
    model = AutoModelForCausalLM.from_pretrained(llama_family[2], dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(llama_family[2])
    ctx = tok("Question: How many legs do horses have?\nAnswer:").input_ids
    assert ctx[0] == 1  # the pico tokenizer adds BOS to the prompt
    for choice, value in zip(["four", "two"], got):
        cont = tok(" " + choice, add_special_tokens=False).input_ids
        ids = torch.tensor([ctx + cont])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0].double(), -1)
        want = sum(logp[len(ctx) - 1 + k, t].item() for k, t in enumerate(cont))
        assert value == pytest.approx(want, rel=1e-5)


def test_fewshot_prompts_use_other_items_in_a_seeded_order():
    task = Task("t", "t.jsonl", tuple(Item(f"q{i}", ("a", "b"), i % 2) for i in range(6)))
    prefix = fewshot_prefix(task, 2, 3)
    assert prefix.count("Question: ") == 3 and "Question: q2\n" not in prefix
    assert prefix == fewshot_prefix(task, 2, 3)  # deterministic
    assert fewshot_prefix(task, 2, 10).count("Question: ") == 5  # capped at the other items
    assert prompt(task, 4, 0) == "Question: q4\nAnswer:"
    shot = prefix.split("\n\n")[0]
    q = int(shot.split("\n")[0].removeprefix("Question: q"))
    assert shot == f"Question: q{q}\nAnswer: {'ab'[q % 2]}"  # solved with the right answer
