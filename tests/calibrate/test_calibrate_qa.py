"""The calibration stage as a demanding user meets it: architectures whose layers get batch-shaped
arguments (alibi) or whose configs carry dropout or tagged floats; every recipe error one line with
nothing left behind (no output, no half-written cache entry, inputs byte-identical); a damaged cache
entry named; the cache invalidated by what changes the statistics and reused otherwise; regmean on
tied embeddings, per-model weights and token counts, slices and per-filter α against an independent
reference (transformers' whole model with hooks, the closed-form solve in float64)."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest
import torch
from cli_helpers import cli, digest, merge_fails, output_tensors, write_recipe
from safetensors.torch import load_file, save_file

from mergesmith import api
from mergesmith.arch.spec import find_arch
from mergesmith.calibrate import stream
from mergesmith.calibrate.texts import WINDOW, windows
from mergesmith.io.resolve import open_model

TEXT = " ".join(f"Line {i}: a merge of two models reads its calibration text, window by window." for i in range(80))
TOKENS = 300


def _texts(root: Path) -> tuple[Path, Path]:
    root.mkdir(parents=True, exist_ok=True)
    (root / "a.txt").write_text(TEXT, encoding="utf-8")
    (root / "b.txt").write_text(TEXT[::-1], encoding="utf-8")
    return root / "a.txt", root / "b.txt"


def _hooked_grams(model, ids: list[int]) -> dict[str, torch.Tensor]:
    """Independent reference: transformers' whole model in eval mode, a pre-hook on every decoder
    ``nn.Linear``, ``XᵀX / N`` in float64 over the same 256-token windows, one window per call."""
    sums, rows = {}, {}

    def hook_for(name):
        def hook(module, args):
            x = args[0].reshape(-1, args[0].shape[-1]).double()
            sums[name] = sums.get(name, 0) + x.T @ x
            rows[name] = rows.get(name, 0) + x.shape[0]

        return hook

    handles = [
        m.register_forward_pre_hook(hook_for(n + ".weight"))
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and n not in ("lm_head", "embed_out")
    ]
    with torch.no_grad():
        for window in windows(ids):
            model(input_ids=torch.tensor([window]), use_cache=False)
    for handle in handles:
        handle.remove()
    return {k: v / rows[k] for k, v in sums.items()}


def _streamed(model_dir: Path, ids: list[int]) -> dict[str, torch.Tensor]:
    model = open_model(str(model_dir))
    try:
        layers = list(stream.layer_grams(model, find_arch(model.config), windows(ids)))
    finally:
        model.reader.close()
    return {w: g[s].double() for _, g, a in layers for w, s in a.items()}


def _tiny(kind: str, path: Path, **extra) -> Path:
    """A two-layer model of ``kind`` from transformers' config defaults (dropout included)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        kind,
        vocab_size=300,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        **extra,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    return path


IDS = [(7 * i + 3) % 290 + 4 for i in range(2 * WINDOW + 88)]  # two whole windows (one batch) and a short one


@pytest.mark.parametrize("kind", ["bloom", "opt"])
def test_batched_windows_and_dropout_configs_give_the_whole_models_grams(kind, tmp_path):
    """bloom's alibi table folds the batch into its first dimension ([batch·heads, 1, L]): arguments
    recorded for one window cannot be repeated along a batch. opt's config has dropout 0.1, which
    transformers' ``from_config`` leaves on: the calibration model must be in eval mode."""
    from transformers import AutoModelForCausalLM

    model_dir = _tiny(kind, tmp_path / kind)
    reference = _hooked_grams(AutoModelForCausalLM.from_pretrained(model_dir).eval(), IDS)
    streamed = _streamed(model_dir, IDS)
    assert set(streamed) == set(reference) and len(reference) >= 8
    for name, gram in reference.items():
        assert torch.allclose(streamed[name], gram, rtol=1e-5, atol=1e-7), name


def test_dropout_in_a_pico_config_changes_nothing(tmp_path, llama_family, monkeypatch):
    """Attention dropout 0.5 in config.json: streamed and whole-model (fallback) Grams are those of
    the model in eval mode."""
    from transformers import AutoModelForCausalLM

    model_dir = shutil.copytree(llama_family[1], tmp_path / "dropout")
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, "attention_dropout": 0.5}))
    reference = _hooked_grams(AutoModelForCausalLM.from_pretrained(model_dir).eval(), IDS)
    streamed = _streamed(model_dir, IDS)
    monkeypatch.setattr(stream, "_layer_prefix", lambda arch: "model.no_such_layers")
    with pytest.warns(UserWarning, match="calibrating the whole model in memory"):
        whole = _streamed(model_dir, IDS)
    for name, gram in reference.items():
        assert torch.allclose(streamed[name], gram, rtol=1e-5, atol=1e-7), name
        assert torch.allclose(whole[name], gram, rtol=1e-5, atol=1e-7), name


def test_tagged_infinity_in_config_builds():
    """transformers writes inf into config.json as ``{"__float__": "Infinity"}`` (Falcon-H1's
    time_step_limit); the calibration model is built from the decoded value."""
    from transformers import FalconH1Config

    config = FalconH1Config(vocab_size=300, hidden_size=32, num_hidden_layers=1, num_attention_heads=4)
    raw = json.loads(config.to_json_string())
    assert raw["time_step_limit"][1] == {"__float__": "Infinity"}
    model = type("M", (), {"key": "falcon", "config": raw})()
    hf = stream._build(model)
    assert hf.config.time_step_limit[1] == float("inf") and not hf.training


def test_experts_and_state_space_layers_are_refused_at_plan_time():
    from mergesmith.arch.spec import all_architectures
    from mergesmith.config.load import parse_recipe
    from mergesmith.errors import ArchitectureError
    from mergesmith.methods.registry import get_method
    from mergesmith.plan.calibration import calibrated_jobs

    recipe = parse_recipe({"merge_method": "regmean", "models": [{"model": "a"}]})
    refused = []
    for arch in all_architectures():
        if arch.experts_keys:
            with pytest.raises(ArchitectureError, match=f"no calibration path for {arch.family}'s expert layers"):
                calibrated_jobs(recipe, get_method("regmean"), arch, {}, [], [], "r.yml")
            refused.append(arch.family)
        elif arch.family in ("mamba", "mamba2", "falcon_mamba"):  # no linear role: regmean would be linear
            with pytest.raises(ArchitectureError, match="finds no attention or MLP linear layer .* use linear"):
                calibrated_jobs(recipe, get_method("regmean"), arch, {}, [], [], "r.yml")
            refused.append(arch.family)
    assert {"mixtral", "qwen2_moe", "qwen3_moe", "mamba"} <= set(refused)


def _recipe(family, params: str, models=(1, 2), base=True) -> str:
    lines = ["merge_method: regmean", "models:"] + [f"  - model: {family[i]}" for i in models]
    if base:
        lines.append(f"base_model: {family[0]}")
    return "\n".join(lines + ["parameters:", params]) + "\n"


def test_recipe_errors_are_one_line_and_leave_nothing(tmp_path, llama_family, capsys):
    a, _ = _texts(tmp_path)
    cache = tmp_path / "cache"
    flags = ("--calibration-cache", cache)
    before = digest(*llama_family, a)
    (tmp_path / "folder.txt").mkdir()
    (tmp_path / "blank.txt").write_text(" \n\t\n", encoding="utf-8")
    (tmp_path / "nul.txt").write_text("text\x00" * 400, encoding="utf-8")
    (tmp_path / "latin1.txt").write_bytes("café ".encode("latin-1") * 400)
    tokens = f"  calibration_tokens: {TOKENS}"
    cases = [
        ("  calibration: folder.txt", "folder.txt", "not a file"),
        ("  calibration: blank.txt", "blank.txt is empty", "give a file with text"),
        (f"  calibration: nul.txt\n{tokens}", "nul.txt holds NUL bytes", "binary data"),
        ("  calibration: latin1.txt", "latin1.txt is not UTF-8", "re-encoded as UTF-8"),
        ("  calibration: []", "'calibration' is an empty list", "kjv_train"),
        ("  calibration: a.txt\n  calibration_tokens: 2.5", "calibration_tokens", "not an int"),
        ("  calibration: a.txt\n  calibration_tokens: -1", "calibration_tokens", "outside [1, inf]"),
        ("  calibration: a.txt\n  alpha: -0.5", "alpha", "outside [0, 1]"),
    ]
    for params, *fragments in cases:
        merge_fails(capsys, tmp_path, _recipe(llama_family, params), *fragments, extra=flags)
    (tmp_path / "file").write_text("not a directory")
    for root in (tmp_path / "file", tmp_path / "file" / "below"):
        merge_fails(
            capsys,
            tmp_path,
            _recipe(llama_family, f"  calibration: a.txt\n{tokens}"),
            f"calibration cache {root}",
            "is a file, not a directory",
            "--calibration-cache",
            extra=("--calibration-cache", root),
        )
    bare = tmp_path / "bare"  # weights and config, no tokenizer files
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(llama_family[1] / name, bare / name)
    family = [llama_family[0], bare, llama_family[2]]
    merge_fails(
        capsys,
        tmp_path,
        _recipe(family, f"  calibration: a.txt\n{tokens}"),
        f"model '{bare}': cannot load its tokenizer",
        "put its tokenizer files",
        extra=flags,
    )
    assert not cache.exists() or list(cache.iterdir()) == []
    assert digest(*llama_family, a) == before


def test_a_full_disk_mid_calibration_is_one_line_and_leaves_no_partial_entry(
    tmp_path, llama_family, capsys, monkeypatch
):
    """The disk fills while the second model's third layer is written (safetensors raises its own
    error type, not OSError): one line naming the cache, exit 2; the first model's entry is
    complete, the second has none, no staging sibling stays, no output is written."""
    import safetensors.torch
    from safetensors import SafetensorError

    a, _ = _texts(tmp_path)
    cache = tmp_path / "cache"
    real, calls = safetensors.torch.save_file, []

    def filling(tensors, filename, *args, **kwargs):
        calls.append(filename)
        if len(calls) == 7:
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", filling)
    recipe = _recipe(llama_family, f"  calibration: a.txt\n  calibration_tokens: {TOKENS}")
    merge_fails(
        capsys,
        tmp_path,
        recipe,
        f"calibration cache {cache}: cannot write",
        "No space left",
        extra=("--calibration-cache", cache),
    )
    assert len(calls) == 7
    entries = sorted(cache.iterdir())  # hidden .partial siblings included
    assert len(entries) == 1 and (entries[0] / "calibration.json").is_file()


def test_a_damaged_cache_entry_is_named_with_the_fix(tmp_path, llama_family, capsys):
    a, _ = _texts(tmp_path)
    cache = tmp_path / "cache"
    text = _recipe(llama_family, f"  calibration: a.txt\n  calibration_tokens: {TOKENS}")
    api.merge(text.replace("a.txt", str(a)), tmp_path / "first", calibration_cache=cache)
    entry = sorted(cache.iterdir())[0]
    (entry / "layer-00002.safetensors").write_bytes(b"\x00" * 100)
    line = merge_fails(
        capsys, tmp_path, text, f"calibration cache entry {entry} is damaged", extra=("--calibration-cache", cache)
    )
    assert "remove that directory" in line
    (entry / "calibration.json").write_text('{"aliases": ')
    merge_fails(
        capsys, tmp_path, text, f"calibration cache entry {entry} is damaged", extra=("--calibration-cache", cache)
    )
    (entry / "calibration.json").unlink()
    merge_fails(
        capsys, tmp_path, text, f"calibration cache entry {entry} is incomplete", extra=("--calibration-cache", cache)
    )
    shutil.rmtree(entry)
    code, _, _ = cli(
        capsys, "merge", write_recipe(tmp_path, text), tmp_path / "again", "--quiet", "--calibration-cache", cache
    )
    assert code == 0 and torch.equal(
        output_tensors(tmp_path / "again")["model.layers.2.mlp.down_proj.weight"],
        output_tensors(tmp_path / "first")["model.layers.2.mlp.down_proj.weight"],
    )


def test_a_merge_waits_for_another_process_computing_the_same_entry(tmp_path, llama_family, capsys, monkeypatch):
    """Two merges sharing a model: while another live process (pid 1 here) stages the entry, the
    merge waits with one warning and reuses what that process publishes, running no model."""
    a, _ = _texts(tmp_path)
    cache = tmp_path / "cache"
    text = _recipe(llama_family, f"  calibration: {a}\n  calibration_tokens: {TOKENS}")
    api.merge(text, tmp_path / "first", calibration_cache=cache)
    entry = sorted(cache.iterdir())[0]
    done = entry.rename(tmp_path / "done")
    live = cache / f".{entry.name}.partial-1"  # pid 1 is alive: another process computing the entry
    live.mkdir()

    def no_model(*args, **kwargs):
        pytest.fail("ran a model while waiting")
        yield

    monkeypatch.setattr(stream, "layer_grams", no_model)

    def other_process_finishes():
        time.sleep(1.0)
        done.rename(entry)
        live.rmdir()

    finisher = threading.Thread(target=other_process_finishes)
    finisher.start()
    code, _, err = cli(
        capsys, "merge", write_recipe(tmp_path, text), tmp_path / "again", "--quiet", "--calibration-cache", cache
    )
    finisher.join()
    assert code == 0, err
    assert err.count(f"{entry} is being computed by another process (pid 1); waiting for it") == 1
    assert torch.equal(
        output_tensors(tmp_path / "again")["model.layers.2.mlp.down_proj.weight"],
        output_tensors(tmp_path / "first")["model.layers.2.mlp.down_proj.weight"],
    )


def test_the_cache_follows_texts_tokens_and_model_content(tmp_path, llama_family, monkeypatch):
    """Another text, token count or model content (weights, a tokenizer file) runs the model again;
    a copy of the model in another folder, or another α, reuses the entry."""
    a, b = _texts(tmp_path / "texts")
    cache, runs = tmp_path / "cache", []
    real = stream.layer_grams
    monkeypatch.setattr(stream, "layer_grams", lambda *x, **k: runs.append(x[0].key) or real(*x, **k))
    one = shutil.copytree(llama_family[1], tmp_path / "one")
    family = [llama_family[0], one]

    def merge(text_file, tokens, alpha=0.9, models=family):
        out = tmp_path / f"out{len(list(tmp_path.glob('out*')))}"
        params = f"  calibration: {text_file}\n  calibration_tokens: {tokens}\n  alpha: {alpha}"
        api.merge(_recipe(models, params, models=(1,)), out, calibration_cache=cache)
        count = len(runs)
        runs.clear()
        return count

    assert merge(a, TOKENS) == 1
    assert merge(a, TOKENS, alpha=0.3) == 0
    assert merge(a, TOKENS, models=[llama_family[0], shutil.copytree(one, tmp_path / "copy")]) == 0
    assert merge(b, TOKENS) == 1
    assert merge(a, TOKENS - 1) == 1
    tensors = load_file(one / "model.safetensors")
    tensors["model.layers.0.mlp.up_proj.weight"][0, 0] += 1.0
    save_file(tensors, one / "model.safetensors", metadata={"format": "pt"})
    assert merge(a, TOKENS) == 1
    (one / "tokenizer.model").write_bytes(b"a sentencepiece model")  # tokenizer files are model content
    assert merge(a, TOKENS) == 1
    assert len(list(cache.iterdir())) == 5


def _solve(weights, grams, scales, alpha):
    """``(Σ s G̃)⁻¹ Σ s G̃ Wᵀ`` transposed, with a general solver (not the method's Cholesky path)."""
    regs = [s * (alpha * g + (1 - alpha) * torch.diag(torch.diag(g))) for g, s in zip(grams, scales)]
    rhs = sum(r @ w.double().T for r, w in zip(regs, weights))
    return torch.linalg.solve(sum(regs), rhs).T


def _ids(model_dir: Path, texts, tokens: int) -> list[int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = []
    for k, text in enumerate(texts):
        share = tokens // len(texts) + (k < tokens % len(texts))
        ids += tokenizer(text.read_text(), add_special_tokens=False)["input_ids"][:share]
    return ids


def _reference_grams(model_dir: Path, texts, tokens: int) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    return _hooked_grams(model, _ids(model_dir, texts, tokens))


def test_tied_embeddings_without_a_base_per_model_texts_tokens_and_weights(tmp_path, qwen2_family):
    """qwen2 ties its head to the embeddings (no lm_head in the files, none in the output); no
    base_model; model 1 on two files (one relative to the recipe), 200 tokens, weight 1; model 2 on
    the other file, the global 300 tokens, weight 3. Every linear weight is the closed form on
    Grams from transformers' own model; every other tensor is the 1:3 average."""
    a, b = _texts(tmp_path)
    recipe = write_recipe(
        tmp_path,
        f"""merge_method: regmean
models:
  - model: {qwen2_family[1]}
    parameters: {{calibration: [a.txt, {b}], calibration_tokens: 200}}
  - model: {qwen2_family[2]}
    parameters: {{calibration: b.txt, weight: 3}}
parameters:
  calibration_tokens: {TOKENS}
  alpha: 0.6
""",
    )
    api.merge(recipe, tmp_path / "out", calibration_cache=None)
    out = output_tensors(tmp_path / "out")
    inputs = [load_file(p / "model.safetensors") for p in qwen2_family[1:]]
    assert set(out) == set(inputs[0]) and "lm_head.weight" not in out
    grams = [_reference_grams(qwen2_family[1], [a, b], 200), _reference_grams(qwen2_family[2], [b], TOKENS)]
    assert len(grams[0]) == 7 * 4
    for name in out:
        if name in grams[0]:
            expected = _solve([w[name] for w in inputs], [g[name] for g in grams], [1.0, 3.0], 0.6)
        else:
            expected = (inputs[0][name].double() + 3 * inputs[1][name].double()) / 4
        assert torch.allclose(out[name].double(), expected, rtol=1e-4, atol=1e-6), name


def test_slices_and_per_filter_alpha(tmp_path, llama_family):
    """Two slices (calibration given in the first slice's sources, reused by the second) and α by
    filter: attention 0.2, the rest 0.95; base deltas; checked against the closed form."""
    a, b = _texts(tmp_path)
    base, one, two = llama_family
    rows = []
    for lo, hi, own in ((0, 2, True), (2, 4, False)):
        rows.append("  - sources:")
        for model, text in ((one, "a.txt"), (two, "b.txt"), (base, None)):
            rows.append(f"      - model: {model}\n        layer_range: [{lo}, {hi}]")
            if own and text:
                rows.append(f"        parameters: {{calibration: {text}}}")
    recipe = write_recipe(
        tmp_path,
        f"merge_method: regmean\nbase_model: {base}\nslices:\n"
        + "\n".join(rows)
        + f"\nparameters:\n  calibration_tokens: {TOKENS}\n  alpha:\n    - filter: self_attn\n      value: 0.2\n"
        "    - value: 0.95\n",
    )
    api.merge(recipe, tmp_path / "out", calibration_cache=None)
    out = output_tensors(tmp_path / "out")
    weights = [load_file(p / "model.safetensors") for p in llama_family]
    grams = [_reference_grams(one, [a], TOKENS), _reference_grams(two, [b], TOKENS)]
    for name in grams[0]:
        alpha = 0.2 if "self_attn" in name else 0.95
        deltas = [w[name].double() - weights[0][name].double() for w in weights[1:]]
        expected = _solve(deltas, [g[name] for g in grams], [1.0, 1.0], alpha) + weights[0][name].double()
        assert torch.allclose(out[name].double(), expected, rtol=1e-4, atol=1e-6), name


def test_plan_names_texts_and_tokens_per_model(tmp_path, llama_family, capsys):
    """Per-model files and tokens, a global bundled text named with its .txt, the default 4096 tokens."""
    a, b = _texts(tmp_path)
    recipe = write_recipe(
        tmp_path,
        f"""merge_method: regmean
models:
  - model: {llama_family[1]}
    parameters: {{calibration: [a.txt, b.txt], calibration_tokens: 301}}
  - model: {llama_family[2]}
parameters:
  calibration: kjv_train.txt
  alpha: 0.5
""",
    )
    code, out, _ = cli(capsys, "plan", recipe, "--calibration-cache", tmp_path / "cache")
    assert code == 0
    assert f"# calibration: {llama_family[1]} on {a}, {b} (301 tokens; not cached" in out
    kjv = next(line for line in out.splitlines() if line.startswith(f"# calibration: {llama_family[2]} on "))
    assert "kjv_train.txt (4096 tokens; not cached" in kjv
    assert not (tmp_path / "cache").exists()  # planning writes nothing
    (tmp_path / "cache").write_text("a file")
    code, _, err = cli(capsys, "plan", recipe, "--calibration-cache", tmp_path / "cache")
    assert code == 2 and f"calibration cache {tmp_path / 'cache'} is a file, not a directory" in err


def test_base_model_changes_only_rounding(tmp_path, llama_family):
    """With base_model the solve runs on deltas; without it on the weights: the same merge (the base
    is a reference, neither calibrated nor averaged), read from one cache."""
    a, _ = _texts(tmp_path)
    params = f"  calibration: {a}\n  calibration_tokens: {TOKENS}\n  alpha: 0.7"
    cache = tmp_path / "cache"
    api.merge(_recipe(llama_family, params), tmp_path / "with", calibration_cache=cache)
    api.merge(_recipe(llama_family, params, base=False), tmp_path / "without", calibration_cache=cache)
    with_base, without = output_tensors(tmp_path / "with"), output_tensors(tmp_path / "without")
    assert len(list(cache.iterdir())) == 2
    for name in with_base:
        assert torch.allclose(with_base[name], without[name], rtol=1e-5, atol=1e-6), name
    name = "model.layers.1.mlp.down_proj.weight"
    assert not torch.allclose(with_base[name], load_file(llama_family[0] / "model.safetensors")[name], atol=1e-3)


def test_a_large_corpus_is_not_tokenized_whole(llama_family):
    """The first tokens of a prefix are those of the whole text (bundled books, 1 to 70 000 tokens),
    and a 30 MB corpus is tokenized only as far as 4096 tokens need."""
    from transformers import AutoTokenizer

    from mergesmith.calibrate.texts import DATA_DIR, first_tokens

    tokenizer = AutoTokenizer.from_pretrained(llama_family[1])
    seen = []

    def counting(text, **kwargs):
        seen.append(len(text))
        return tokenizer(text, **kwargs)

    for name in ("kjv_train", "austen_train"):
        text = (DATA_DIR / "text" / f"{name}.txt").read_text(encoding="utf-8")
        whole = tokenizer(text, add_special_tokens=False)["input_ids"]
        for count in (1, 255, 4096, 70_000):
            assert first_tokens(tokenizer, text, count)[:count] == whole[:count], (name, count)
    corpus = text * 100
    assert first_tokens(counting, corpus, 4096)[:4096] == whole[:4096]
    assert max(seen) < 200_000 < len(corpus)
