"""The calibration stage (mergesmith/calibrate) on pico models: Gram matrices streamed layer by
layer equal those of the whole transformers model run with hooks; the cache is reused; regmean
merges end to end; errors are one line with nothing left behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from cli_helpers import assert_nothing_written, cli, merge_fails, output_tensors, write_recipe
from safetensors.torch import load_file

from mergesmith import api
from mergesmith.arch.spec import find_arch
from mergesmith.calibrate import stream
from mergesmith.calibrate.cache import GramReader
from mergesmith.calibrate.texts import WINDOW, windows
from mergesmith.io.resolve import open_model
from mergesmith.methods.regmean import regmean

TEXT = " ".join(
    f"Sentence {i}: the quick brown fox jumps over the lazy dog, and a model merge averages weights." for i in range(60)
)


def _text(tmp_path: Path) -> Path:
    path = tmp_path / "cal.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def _whole_model_grams(model_dir: Path, ids: list[int]) -> dict[str, torch.Tensor]:
    """Independent reference: the whole model from transformers, forward hooks on every nn.Linear
    of the decoder layers, XᵀX / N summed in float64 over the same windows."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    sums, rows, handles = {}, {}, []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and ".layers." in name:

            def hook(mod, args, out, name=name):
                x = args[0].reshape(-1, args[0].shape[-1]).double()
                sums[name + ".weight"] = sums.get(name + ".weight", 0) + x.T @ x
                rows[name + ".weight"] = rows.get(name + ".weight", 0) + x.shape[0]

            handles.append(module.register_forward_hook(hook))
    with torch.no_grad():
        for window in windows(ids):
            model(input_ids=torch.tensor([window]))
    return {k: v / rows[k] for k, v in sums.items()}


@pytest.mark.parametrize("kind", ["llama", "gemma3"])
def test_streamed_grams_equal_the_whole_models(kind, llama_family, gemma3_family, monkeypatch):
    """gemma3 alternates sliding and full attention: each layer must get its own mask. Three whole
    windows and a short one, in batches of at most two windows (the recorded masks and positions
    repeated along the batch), the Gram sums in blocks of 24 features (64 and 128: a ragged last block)."""
    monkeypatch.setattr(stream, "BATCH_TOKENS", 2 * WINDOW)
    monkeypatch.setattr(stream, "BLOCK", 24)
    model_dir = {"llama": llama_family, "gemma3": gemma3_family}[kind][1]
    model = open_model(str(model_dir))
    ids = [(7 * i + 3) % 290 + 4 for i in range(3 * WINDOW + 40)]
    assert [len(g) for g in stream._groups(windows(ids))] == [2, 1, 1]
    try:
        layers = list(stream.layer_grams(model, find_arch(model.config), windows(ids)))
    finally:
        model.reader.close()
    reference = _whole_model_grams(model_dir, ids)
    seen = set()
    for index, grams, aliases in layers:
        for weight, stored in aliases.items():
            assert f".layers.{index}." in weight
            assert torch.allclose(grams[stored].double(), reference[weight], rtol=1e-5, atol=1e-7), weight
            seen.add(weight)
    assert seen == set(reference)
    q = "model.layers.0.self_attn.{}_proj.weight"
    first = {w: s for _, _, a in layers[:1] for w, s in a.items()}
    assert first[q.format("k")] == first[q.format("v")] == q.format("q")  # one matrix for q/k/v
    assert first["model.layers.0.mlp.up_proj.weight"] == "model.layers.0.mlp.gate_proj.weight"
    assert len(layers[0][1]) == 4  # attention input, o_proj input, MLP input, down_proj input


@pytest.mark.parametrize("features", [7, 24, 50])
def test_block_triangle_sums_mirror_to_the_full_gram(features, monkeypatch):
    """Only the lower block triangle is accumulated; mirrored, it is XᵀX exactly (same dot products)."""
    monkeypatch.setattr(stream, "BLOCK", 8)
    xs = [torch.randn(30, features, generator=torch.Generator().manual_seed(s), dtype=torch.float64) for s in (1, 2)]
    total = torch.zeros(features, features, dtype=torch.float64)
    for x in xs:
        stream.add_gram(total, x)
    assert torch.allclose(stream.mirror(total), xs[0].T @ xs[0] + xs[1].T @ xs[1], rtol=1e-14, atol=1e-13)
    assert torch.equal(total, total.T)


def _recipe(family, text: Path, alpha=0.9, models=(1, 2), base=True, extra="") -> str:
    lines = ["merge_method: regmean", "models:"]
    lines += [f"  - model: {family[i]}" for i in models]
    if base:
        lines.append(f"base_model: {family[0]}")
    lines += ["parameters:", f"  calibration: {text}", "  calibration_tokens: 300", f"  alpha: {alpha}"]
    return "\n".join(lines) + "\n" + extra


def _cached_grams(cache: Path, name: str) -> dict[str, torch.Tensor]:
    """model key -> its cached Gram for weight ``name`` (float64), read through the aliases."""
    grams = {}
    for entry in cache.iterdir():
        reader = GramReader(entry)
        grams[json.loads((entry / "calibration.json").read_text())["model"]] = reader.get(name).double()
        reader.close()
    return grams


def test_merge_solves_with_the_cached_grams_and_reuses_them(tmp_path, llama_family, monkeypatch):
    text, cache = _text(tmp_path), tmp_path / "cache"
    runs = []
    real = stream.layer_grams
    monkeypatch.setattr(stream, "layer_grams", lambda *a, **k: runs.append(a[0].key) or real(*a, **k))
    api.merge(_recipe(llama_family, text, alpha=0.5), tmp_path / "a", calibration_cache=cache)
    assert sorted(runs) == sorted(str(p) for p in llama_family[1:])
    assert len(list(cache.iterdir())) == 2  # one entry per model, no staging left
    out = output_tensors(tmp_path / "a")
    # A weight of the output against the formula on the cached Grams (k_proj reads q_proj's matrix).
    name = "model.layers.2.self_attn.k_proj.weight"
    grams = _cached_grams(cache, name)
    weights = [load_file(p / "model.safetensors")[name].double() for p in llama_family]
    deltas = [w - weights[0] for w in weights[1:]]
    expected = regmean(deltas, [grams[str(p)] for p in llama_family[1:]], [1.0, 1.0], 0.5) + weights[0]
    assert torch.allclose(out[name], expected.float(), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(out[name], _mean(llama_family, name), atol=1e-4)  # not the plain average
    norm = "model.layers.2.input_layernorm.weight"
    assert torch.equal(out[norm], _mean(llama_family, norm))  # outside linear layers: the average
    # Another α and another partner: only the new partner runs; the cached model is read.
    runs.clear()
    three = [llama_family[0], llama_family[1], tmp_path / "ft3"]
    _copy_scaled(llama_family[2], three[2])
    api.merge(_recipe(three, text, alpha=0.7), tmp_path / "b", calibration_cache=cache)
    assert runs == [str(three[2])]
    runs.clear()
    api.merge(_recipe(llama_family, text, alpha=0.1), tmp_path / "c", calibration_cache=cache)
    assert runs == []  # every Gram from the cache: the second merge costs only the solve
    assert not torch.equal(output_tensors(tmp_path / "c")[name], out[name])


def _mean(family, name):
    """The linear method's weighted sum in float32 with weights 1, 1, normalised."""
    a, b = (load_file(p / "model.safetensors")[name] for p in family[1:])
    return (torch.zeros_like(a).addcmul_(a, torch.tensor(1.0)).addcmul_(b, torch.tensor(1.0))) / 2


def _copy_scaled(src: Path, dst: Path) -> None:
    import shutil

    from safetensors.torch import save_file

    shutil.copytree(src, dst)
    tensors = load_file(dst / "model.safetensors")
    save_file({k: v * 1.01 for k, v in tensors.items()}, dst / "model.safetensors", metadata={"format": "pt"})


def test_plan_lists_texts_tokens_and_the_grams(tmp_path, llama_family, capsys):
    recipe = write_recipe(tmp_path, _recipe(llama_family, _text(tmp_path)))
    code, out, _ = cli(capsys, "plan", recipe, "--tensors", "--calibration-cache", tmp_path / "cache")
    assert code == 0
    assert f"# calibration: {llama_family[1]} on {_text(tmp_path)} (300 tokens; not cached" in out
    line = next(r for r in out.splitlines() if r.startswith("model.layers.1.self_attn.k_proj.weight"))
    assert "\tregmean\tfloat64->float32\talpha=0.9" in line  # a float32 output: the float64 solve
    assert f"{llama_family[2]}#grams:model.layers.1.self_attn.k_proj.weight" in line
    norm = next(r for r in out.splitlines() if r.startswith("model.norm.weight"))
    assert "\tlinear\t" in norm and str(llama_family[0]) not in norm  # the base is a reference only
    # Per-model texts: a list of files (relative to the recipe) and a bundled name; tokens per model.
    (tmp_path / "second.txt").write_text(TEXT[::-1], encoding="utf-8")
    own = _recipe(llama_family, _text(tmp_path)).replace(
        f"  - model: {llama_family[1]}\n",
        f"  - model: {llama_family[1]}\n    parameters: {{calibration: [cal.txt, second.txt], calibration_tokens: 200}}\n",
    )
    own = own.replace(
        f"  - model: {llama_family[2]}\n", f"  - model: {llama_family[2]}\n    parameters: {{calibration: kjv_train}}\n"
    )
    code, out, _ = cli(capsys, "plan", write_recipe(tmp_path, own, "own.yml"), "--json")
    calibration = {c["model"]: c for c in json.loads(out)["calibration"]}
    first, second = calibration[str(llama_family[1])], calibration[str(llama_family[2])]
    assert first["texts"] == [str(tmp_path / "cal.txt"), str(tmp_path / "second.txt")] and first["tokens"] == 200
    assert Path(second["texts"][0]).name == "kjv_train.txt" and second["tokens"] == 300
    assert not first["cached"] and first["cache"] != second["cache"]


def test_errors_are_one_line_and_leave_nothing(tmp_path, llama_family, capsys):
    text = _text(tmp_path)
    cache = tmp_path / "cache"
    flags = ("--calibration-cache", cache)
    no_text = _recipe(llama_family, text).replace(f"  calibration: {text}\n", "")
    merge_fails(capsys, tmp_path, no_text, "needs calibration text for model", "'calibration'", extra=flags)
    merge_fails(capsys, tmp_path, _recipe(llama_family, text, alpha=1.5), "alpha", "outside [0, 1]", extra=flags)
    short = _recipe(llama_family, text).replace("calibration_tokens: 300", "calibration_tokens: 100000")
    merge_fails(capsys, tmp_path, short, "calibration text", "fewer than the 100000", extra=flags)
    missing = _recipe(llama_family, text).replace(str(text), "no_such_text")
    merge_fails(capsys, tmp_path, missing, "calibration text 'no_such_text' not found", "kjv_train", extra=flags)
    negative = _recipe(llama_family, text).replace(
        f"  - model: {llama_family[1]}\n", f"  - model: {llama_family[1]}\n    parameters: {{weight: -1.0}}\n"
    )
    merge_fails(capsys, tmp_path, negative, "regmean weights [-1.0, 1.0] must be >= 0", extra=flags)
    assert not cache.exists() or list(cache.iterdir()) == []
    assert_nothing_written(tmp_path / "out")


def test_whole_model_fallback_warns_and_gives_the_same_grams(llama_family, monkeypatch):
    """No module list where the architecture data puts the layers: the whole model runs, with a
    memory warning, and the Grams are the same."""
    model = open_model(str(llama_family[1]))
    ids = [(5 * i + 1) % 290 + 4 for i in range(100)]
    try:
        streamed = {
            w: g[s] for _, g, a in stream.layer_grams(model, find_arch(model.config), [ids]) for w, s in a.items()
        }
        monkeypatch.setattr(stream, "_layer_prefix", lambda arch: "model.decoder_layers")
        with pytest.warns(UserWarning, match="calibrating the whole model in memory"):
            layers = list(stream.layer_grams(model, find_arch(model.config), [ids]))
    finally:
        model.reader.close()
    assert len(layers) == 1
    whole = {w: layers[0][1][s] for w, s in layers[0][2].items()}
    assert set(whole) == set(streamed)
    for name in whole:
        assert torch.allclose(whole[name], streamed[name], rtol=1e-5, atol=1e-7), name


def test_architectures_without_a_calibration_path_are_refused(llama_family):
    from mergesmith.arch.spec import all_architectures
    from mergesmith.config.load import parse_recipe
    from mergesmith.errors import ArchitectureError
    from mergesmith.methods.registry import get_method
    from mergesmith.plan.calibration import calibrated_jobs

    gpt2 = next(a for a in all_architectures() if a.family == "gpt2")
    recipe = parse_recipe({"merge_method": "regmean", "models": [{"model": "a"}]})
    with pytest.raises(ArchitectureError, match="no calibration path for gpt2: its linear layers are Conv1D"):
        calibrated_jobs(recipe, get_method("regmean"), gpt2, {}, [], [], "r.yml")
    model = open_model(str(llama_family[1]))
    model.reader.close()
    unknown = type(model)(model.key, model.path, {"model_type": "no_such_model"}, model.tensors, model.reader)
    with pytest.raises(ArchitectureError, match="transformers cannot build"):
        stream._build(unknown)


def _adapter(path: Path, seed: int) -> Path:
    """A PEFT LoRA adapter of the seed-0 pico llama (its B factors made non-zero), and the
    model PEFT's merge_and_unload() makes of it, saved beside it."""
    peft = pytest.importorskip("peft")
    from pico import build_model, save_model

    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "o_proj", "down_proj"])
    model = peft.get_peft_model(build_model("llama", seed=0), config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if "lora_B" in name:
                param.add_(0.1 * torch.randn(param.shape, generator=generator))
    model.save_pretrained(path)
    save_model(model.merge_and_unload(), path.with_name(path.name + "-merged"))
    return path


def test_lora_inputs_calibrate_as_their_merged_models(tmp_path, llama_family):
    """``base+adapter`` inputs (folded on the fly, no LoRA cache) give the merge that the
    PEFT-merged model directories give, and each gets its own cache entry."""
    text, base = _text(tmp_path), llama_family[0]
    adapters = [_adapter(tmp_path / f"lora{seed}", seed) for seed in (1, 2)]
    merged_dirs = [a.with_name(a.name + "-merged") for a in adapters]
    folded = [base, *(f"{base}+{a}" for a in adapters)]
    api.merge(_recipe(folded, text), tmp_path / "a", calibration_cache=tmp_path / "c1", lora_cache=None)
    api.merge(_recipe([base, *merged_dirs], text), tmp_path / "b", calibration_cache=tmp_path / "c2")
    a, b = output_tensors(tmp_path / "a"), output_tensors(tmp_path / "b")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=1e-4, atol=1e-5), name
    assert len(list((tmp_path / "c1").iterdir())) == 2
    name = "model.layers.1.self_attn.o_proj.weight"
    assert not torch.allclose(a[name], (load_file(merged_dirs[0] / "model.safetensors")[name]), atol=1e-4)
