"""Models with different vocabularies: tokenizer_source base / union / a model, tokenizer.tokens,
pad_to_multiple_of, tied embeddings. Numbers are checked against the fill rules of
mergesmith/plan/vocab.py and, where mergekit 0.1.5 has the same semantics, against mergekit.

Inputs (pico llama, V = 300 tokens): ``base``, ``ft1`` (V rows); ``chat_a`` = ft2 plus
<|im_start|>, <|im_end|> at ids 300, 301; ``chat_b`` = ft1 plus the same two tokens in the other
order (ids 301, 300), so rows must be matched by token, not by id.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from pico import VOCAB_SIZE
from reference import compare, load_dir, run_mergekit

from mergesmith.api import merge, plan
from mergesmith.errors import ConfigError, ShapeMismatchError
from mergesmith.io.header import ModelInput
from mergesmith.io.reader import TensorInfo
from mergesmith.plan.render import render_json, render_text

V = VOCAB_SIZE
CHATML = ("<|im_start|>", "<|im_end|>")
EMBED, HEAD = "model.embed_tokens.weight", "lm_head.weight"


def _extend(src: Path, dst: Path, seed: int, tokens=CHATML, rows: int | None = None) -> Path:
    """``src`` with ``tokens`` added as special tokens (fresh random rows), or padded to ``rows``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(src)
    if tokens:
        tok.add_special_tokens({"additional_special_tokens": list(tokens)})
    old = model.get_input_embeddings().weight.shape[0]
    model.resize_token_embeddings(rows or len(tok), mean_resizing=False)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in {model.get_input_embeddings(), model.get_output_embeddings()}:
            new = layer.weight[old:]
            new.copy_(torch.randn(new.shape, generator=generator) * 0.02)
    model.save_pretrained(dst)
    tok.save_pretrained(dst)
    return dst


@pytest.fixture(scope="module")
def llama(llama_family, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("vocab")
    base, ft1, ft2 = llama_family
    return {
        "base": base,
        "ft1": ft1,
        "chat_a": _extend(ft2, root / "chat_a", seed=11),
        "chat_b": _extend(ft1, root / "chat_b", seed=12, tokens=CHATML[::-1]),
        "base_pad": _extend(base, root / "base_pad", seed=13, tokens=(), rows=320),
    }


@pytest.fixture(scope="module")
def weights(llama) -> dict[str, dict[str, torch.Tensor]]:
    return {key: load_dir(path) for key, path in llama.items()}


def _recipe(method: str, models: list[tuple[Path, float]], base: Path, tail: str, extra: str = "") -> str:
    lines = [f"merge_method: {method}", f"base_model: {base}", "dtype: float32", "models:"]
    for path, weight in models:
        lines += [f"  - model: {path}", f"    parameters: {{weight: {weight}{extra}}}"]
    return "\n".join(lines) + "\n" + tail


def _merged(recipe: str, out: Path):
    merge(recipe, out)
    return load_dir(out), json.loads((out / "config.json").read_text())


def _in_our_order(ref_dir: Path, ours_dir: Path) -> dict[str, torch.Tensor]:
    """mergekit's output with vocabulary rows moved to our ids, token by token: mergekit's union
    numbers new tokens in the order of a Rust hash map, which changes from run to run."""
    from tokenizers import Tokenizer

    ref_ids = Tokenizer.from_file(str(ref_dir / "tokenizer.json")).get_vocab()
    our_ids = Tokenizer.from_file(str(ours_dir / "tokenizer.json")).get_vocab()
    assert set(ref_ids) == set(our_ids)
    order = [ref_ids[token] for token in sorted(our_ids, key=our_ids.get)]
    tensors = load_dir(ref_dir)
    for name in (EMBED, HEAD):
        if name in tensors:
            rows = tensors[name].shape[0]
            tensors[name] = tensors[name][order + list(range(len(order), rows))]
    return tensors


def _load(out: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(out), AutoTokenizer.from_pretrained(out)


@pytest.mark.mergekit
def test_union_fills_rows_a_model_lacks_with_the_mean_and_matches_mergekit(llama, weights, tmp_path):
    # The base (base_pad: 320 rows, 300 tokens) lacks both ChatML tokens, so its rows for them
    # are the mean of chat_a's and chat_b's rows of the same token (ids 300/301 in a, 301/300 in
    # b). Its 18 rows past the new tokens are kept (every input takes the base's): mergekit sizes
    # the output by the tokenizer and drops them.
    recipe = _recipe(
        "linear",
        [(llama["base_pad"], 0.2), (llama["chat_a"], 0.3), (llama["chat_b"], 0.5)],
        llama["base_pad"],
        "tokenizer_source: union\n",
    )
    ours, config = _merged(recipe, tmp_path / "ours")
    assert config["vocab_size"] == 320 and ours[EMBED].shape == ours[HEAD].shape == (320, 64)
    a, b, base = weights["chat_a"], weights["chat_b"], weights["base_pad"]
    for name in (EMBED, HEAD):
        for out_id, a_id, b_id in ((300, 300, 301), (301, 301, 300)):
            mean = (torch.zeros(64) + a[name][a_id] + b[name][b_id]) / 2
            want = 0.2 * mean + 0.3 * a[name][a_id] + 0.5 * b[name][b_id]
            torch.testing.assert_close(ours[name][out_id], want, rtol=0, atol=1e-7)
        torch.testing.assert_close(
            ours[name][:V], 0.2 * base[name][:V] + 0.3 * a[name][:V] + 0.5 * b[name][:V], rtol=0, atol=1e-7
        )
        torch.testing.assert_close(ours[name][V + 2 :], base[name][V + 2 :], rtol=0, atol=1e-7)
    ref = _in_our_order(run_mergekit(recipe, tmp_path / "ref"), tmp_path / "ours")
    assert ref[EMBED].shape == (V + 2, 64)
    ours_cut = {**ours, EMBED: ours[EMBED][: V + 2], HEAD: ours[HEAD][: V + 2]}
    parity = compare(ours_cut, ref)
    assert parity.matches and parity.within_ulp == 0, parity.summary()

    model, tok = _load(tmp_path / "ours")
    ids = tok.convert_tokens_to_ids(list(CHATML))
    assert ids == [300, 301]
    assert tok("<|im_start|>hi<|im_end|>").input_ids[1] == 300
    torch.testing.assert_close(model.get_input_embeddings().weight[ids], ours[EMBED][ids], rtol=0, atol=0)
    assert model(torch.tensor([[1, *ids]])).logits.shape == (1, 3, 320)


def test_a_missing_row_takes_the_base_models_row_when_the_base_has_the_token(llama, weights, tmp_path):
    # The base (chat_a) has the ChatML tokens; ft1 lacks them and gets the base's rows, not the
    # mean of chat_a and chat_b.
    recipe = _recipe(
        "linear",
        [(llama["chat_a"], 0.5), (llama["ft1"], 0.25), (llama["chat_b"], 0.25)],
        llama["chat_a"],
        "tokenizer_source: union\n",
    )
    ours, config = _merged(recipe, tmp_path / "out")
    a, b = weights["chat_a"], weights["chat_b"]
    assert config["vocab_size"] == V + 2
    for out_id, b_id in ((300, 301), (301, 300)):
        want = 0.5 * a[EMBED][out_id] + 0.25 * a[EMBED][out_id] + 0.25 * b[EMBED][b_id]
        torch.testing.assert_close(ours[EMBED][out_id], want, rtol=0, atol=1e-7)
    job = plan(recipe).by_output()[EMBED]
    assert [s.rows is None for s in job.sources] == [True, False, False]
    assert [f.rule for f in job.sources[1].rows.fills] == ["base"]  # ft1: from the base
    assert job.sources[2].rows.fills == ()  # chat_b: own rows, re-ordered


def test_tokenizer_source_base_drops_added_tokens_with_a_warning(llama, weights, tmp_path):
    recipe = _recipe(
        "linear", [(llama["base"], 0.5), (llama["chat_a"], 0.5)], llama["base"], "tokenizer_source: base\n"
    )
    with pytest.warns(
        UserWarning,
        match=r"chat_a': 2 tokens \('<\|im_start\|>', '<\|im_end\|>'\) of its 302 "
        r"vocabulary rows .* dropped; tokenizer_source: union keeps",
    ):
        ours, config = _merged(recipe, tmp_path / "out")
    assert config["vocab_size"] == V and ours[HEAD].shape == (V, 64)
    torch.testing.assert_close(
        ours[EMBED], 0.5 * weights["base"][EMBED] + 0.5 * weights["chat_a"][EMBED][:V], rtol=0, atol=1e-7
    )
    assert (tmp_path / "out" / "tokenizer.json").read_bytes() == (llama["base"] / "tokenizer.json").read_bytes()


def test_tokenizer_source_a_fine_tune_takes_its_tokenizer(llama, weights, tmp_path):
    recipe = _recipe(
        "ties",
        [(llama["base"], 1.0), (llama["chat_a"], 0.6)],
        llama["base"],
        f"tokenizer_source: {llama['chat_a']}\n",
        extra=", density: 0.5",
    )
    ours, config = _merged(recipe, tmp_path / "out")
    assert config["vocab_size"] == V + 2 and ours[EMBED].shape == (V + 2, 64)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / "out" / name).read_bytes() == (llama["chat_a"] / name).read_bytes()
    # The base lacks the new tokens, so its rows are chat_a's: the task vector there is zero.
    torch.testing.assert_close(ours[EMBED][V:], weights["chat_a"][EMBED][V:], rtol=0, atol=0)
    _, tok = _load(tmp_path / "out")
    assert tok.convert_tokens_to_ids(list(CHATML)) == [300, 301]


TOKENS_SECTION = """tokenizer:
  source: union
  pad_to_multiple_of: 64
  tokens:
    "<|im_end|>": {{source: {{kind: zero}}, force: true}}
    "<|im_start|>": {{source: {b}}}
    "<|new|>": {{source: {{kind: model_token, model: {base}, token: "</s>"}}}}
    "<s>": {{source: {a}, force: true}}
"""


@pytest.mark.mergekit
def test_token_overrides_and_padding_match_mergekit(llama, weights, tmp_path):
    tail = TOKENS_SECTION.format(a=llama["chat_a"], b=llama["chat_b"], base=llama["base"])
    recipe = _recipe(
        "ties",
        [(llama["base"], 1.0), (llama["chat_a"], 0.7), (llama["chat_b"], 0.3)],
        llama["base"],
        tail + "parameters: {tie_break: mergekit}\n",
        extra=", density: 0.5",
    )
    ours, config = _merged(recipe, tmp_path / "ours")
    assert config["vocab_size"] == 320 and ours[EMBED].shape == ours[HEAD].shape == (320, 64)
    assert not ours[EMBED][301].any()  # forced zero in every input
    pad = ours[EMBED][303:]  # 17 padding rows, one value
    assert torch.equal(pad, pad[:1].expand_as(pad)) and pad.any()
    parity = compare(ours, _in_our_order(run_mergekit(recipe, tmp_path / "ref"), tmp_path / "ours"))
    assert parity.matches and parity.within_ulp == 0, parity.summary()

    model, tok = _load(tmp_path / "ours")
    assert tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>", "<|new|>"]) == [300, 301, 302]
    assert model.get_input_embeddings().weight.shape == (320, 64)


def test_pad_rows_are_the_mean_of_each_inputs_token_rows(llama, weights, tmp_path):
    recipe = _recipe(
        "linear",
        [(llama["base"], 0.5), (llama["ft1"], 0.5)],
        llama["base"],
        "tokenizer: {source: base, pad_to_multiple_of: 128}\n",
    )
    ours, config = _merged(recipe, tmp_path / "out")
    assert config["vocab_size"] == 384
    want = 0.5 * weights["base"][EMBED].mean(0) + 0.5 * weights["ft1"][EMBED].mean(0)
    for row in ours[EMBED][V:]:
        torch.testing.assert_close(row, want, rtol=0, atol=1e-7)


def test_a_forced_token_without_source_takes_the_default_rule_for_every_input(llama, weights, tmp_path):
    # mergekit 0.1.5 raises NotImplementedError for an entry without a source; mergesmith applies
    # the default rule (here: the base lacks the token, so the mean of chat_a and chat_b).
    recipe = _recipe(
        "linear",
        [(llama["base"], 0.2), (llama["chat_a"], 0.3), (llama["chat_b"], 0.5)],
        llama["base"],
        'tokenizer:\n  tokens:\n    "<|im_end|>": {force: true}\n',
    )
    ours, _ = _merged(recipe, tmp_path / "out")
    a, b = weights["chat_a"][EMBED][301], weights["chat_b"][EMBED][300]
    torch.testing.assert_close(ours[EMBED][301], (torch.zeros(64) + a + b) / 2, rtol=0, atol=1e-7)


def test_rows_past_the_last_token_are_kept(llama, weights, tmp_path):
    # base_pad: 320 embedding rows, 300 tokens. mergekit would size the output by the tokenizer
    # (300 rows, see the union test); mergesmith keeps the base's 20 padding rows, and chat_a's
    # rows 300/301 (its ChatML tokens) do not stand in for them.
    recipe = _recipe(
        "linear", [(llama["base_pad"], 0.5), (llama["chat_a"], 0.5)], llama["base_pad"], "tokenizer_source: base\n"
    )
    with pytest.warns(UserWarning, match="2 tokens"):
        ours, config = _merged(recipe, tmp_path / "ours")
    assert config["vocab_size"] == 320 and ours[EMBED].shape == (320, 64)
    torch.testing.assert_close(ours[EMBED][V:], weights["base_pad"][EMBED][V:], rtol=0, atol=1e-7)
    assert _load(tmp_path / "ours")[0].get_input_embeddings().weight.shape == (320, 64)


def test_tied_qwen2_with_different_vocabularies_grows_no_lm_head(qwen2_family, tmp_path):
    chat = _extend(qwen2_family[1], tmp_path / "chat", seed=14)
    recipe = _recipe("linear", [(qwen2_family[0], 0.5), (chat, 0.5)], qwen2_family[0], "tokenizer_source: union\n")
    ours, config = _merged(recipe, tmp_path / "out")
    assert HEAD not in ours and ours[EMBED].shape == (V + 2, 64)
    assert config["tie_word_embeddings"] is True and config["vocab_size"] == V + 2
    torch.testing.assert_close(ours[EMBED][V:], load_dir(chat)[EMBED][V:], rtol=0, atol=0)
    model, tok = _load(tmp_path / "out")
    ids = tok.convert_tokens_to_ids(list(CHATML))
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    torch.testing.assert_close(model.lm_head.weight[ids], ours[EMBED][ids], rtol=0, atol=0)


def test_plan_shows_which_rows_are_re_indexed(llama):
    recipe = _recipe(
        "linear",
        [(llama["base"], 0.5), (llama["chat_b"], 0.5)],
        llama["base"],
        "tokenizer: {source: union, pad_to_multiple_of: 16}\n",
    )
    the_plan = plan(recipe)
    text = render_text(the_plan)
    assert "# vocabulary: union, 302 token ids, 304 rows" in text
    assert f"{llama['base']}:{EMBED}{{300->304 rows: 300 own, 2 mean, 2 pad}}" in text
    assert f"{llama['chat_b']}:{EMBED}{{302->304 rows: 302 own, 2 pad}}" in text
    inputs = json.loads(render_json(the_plan))["tensors"][0]["inputs"]
    assert inputs[0]["rows"] == {"input": 300, "size": 304, "own": 300, "mean": 2, "pad": 2}
    # the same recipe without a tokenizer choice cannot merge the two shapes
    with pytest.raises(ShapeMismatchError, match="set tokenizer_source"):
        plan(_recipe("linear", [(llama["base"], 0.5), (llama["chat_b"], 0.5)], llama["base"], ""))


def test_an_override_from_a_model_without_the_token_is_refused(llama):
    recipe = _recipe(
        "linear",
        [(llama["base"], 0.5), (llama["chat_a"], 0.5)],
        llama["base"],
        f'tokenizer:\n  tokens:\n    "<|im_start|>": {{source: {llama["base"]}}}\n',
    )
    with pytest.raises(ConfigError, match=r"tokenizer.tokens\['<\|im_start\|>'\]: model .* has no token"):
        plan(recipe)


def _header_only(key: str, path: Path, rows: int, gguf: bool) -> ModelInput:
    """An opened model as the planner sees it (no tensor data): only the embedding's header."""
    config = {"architectures": ["LlamaForCausalLM"], "vocab_size": rows}
    tensors = {EMBED: TensorInfo(EMBED, (rows, 64), torch.float32)}
    return ModelInput(key, path, config, tensors, reader=None, gguf_file=path / "m.gguf" if gguf else None)


def test_a_gguf_vocabulary_is_refused_where_it_is_needed_and_assumed_where_rows_agree(llama):
    from mergesmith.arch.spec import arch_for_config
    from mergesmith.config.load import parse_recipe
    from mergesmith.errors import InputFormatError
    from mergesmith.plan.vocab import build_vocab

    arch = arch_for_config({"architectures": ["LlamaForCausalLM"]}, "test")
    models = {
        "base": _header_only("base", llama["base"], V, gguf=False),
        "q": _header_only("q", llama["base"], V, gguf=True),
        "q2": _header_only("q2", llama["base"], V + 2, gguf=True),
    }

    def vocab(source: str, others: list[str]):
        recipe = parse_recipe(
            {
                "merge_method": "linear",
                "base_model": "base",
                "tokenizer_source": source,
                "models": [{"model": k} for k in ["base", *others]],
            }
        )
        return build_vocab(recipe, {k: models[k] for k in ["base", *others]}, arch, "r.yml")

    same = vocab("base", ["q"])
    assert same.output.rows == V and "'q' has no readable tokenizer" in same.warnings[0]
    with pytest.raises(
        InputFormatError, match=r"model 'q2' is a GGUF file \(.*\), and 302 vocabulary rows against 300"
    ):
        vocab("union", ["q2"])
