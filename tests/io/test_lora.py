"""``base+adapter`` inputs: PEFT LoRA adapters folded into their base (mergesmith/io/lora.py).

Adapters are real PEFT adapters of the pico llama with non-zero B factors; the reference is
PEFT's own ``merge_and_unload()`` and, on a whole recipe, mergekit 0.1.5 (which also uses PEFT).
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from pico import build_model, save_model
from reference import compare, load_dir, run_mergekit
from safetensors.torch import load_file, save_file

from mergesmith.api import merge
from mergesmith.cli.main import main
from mergesmith.config.load import parse_recipe
from mergesmith.errors import ConfigError
from mergesmith.io.resolve import open_model

peft = pytest.importorskip("peft")

# Two adapters covering what the merge must honour: per-module rank and alpha patterns,
# modules_to_save, LoRA on embeddings (transposed update), and rsLoRA's alpha/sqrt(r).
ADAPTERS = {
    "patterns": dict(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "v_proj", "down_proj", "embed_tokens"],
        rank_pattern={"layers.1.self_attn.q_proj": 2},
        alpha_pattern={"v_proj": 3},
        modules_to_save=["lm_head"],
    ),
    "rslora": dict(r=8, lora_alpha=16, use_rslora=True, target_modules=["o_proj", "up_proj", "gate_proj"]),
}
TOLERANCE = dict(rtol=1e-6, atol=1e-7)


def make_adapter(path: Path, seed: int, **config) -> torch.nn.Module:
    """Save a PEFT adapter of the seed-0 pico llama; return PEFT's merge_and_unload() model."""
    model = peft.get_peft_model(build_model("llama", seed=0), peft.LoraConfig(**config))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # PEFT zeroes B (A for embeddings): a fresh adapter would change nothing
        for name, param in sorted(model.named_parameters()):
            if any(part in name for part in ("lora_B", "lora_embedding_", "modules_to_save")):
                param.add_(0.1 * torch.randn(param.shape, generator=generator))
    with warnings.catch_warnings():  # PEFT notes that it saves the adapted embedding too
        warnings.simplefilter("ignore", UserWarning)
        model.save_pretrained(path)
    return model.merge_and_unload()


@pytest.fixture(scope="module")
def lora_setup(llama_family, tmp_path_factory):
    """{name: (adapter dir, PEFT-merged model dir)} on llama_family's base."""
    root = tmp_path_factory.mktemp("lora")
    made = {}
    for seed, (name, config) in enumerate(ADAPTERS.items(), start=1):
        merged = make_adapter(root / name, seed, **config)
        made[name] = (root / name, save_model(merged, root / f"{name}-merged"))
    return made


def cli(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def one_error_line(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in {err!r}"


# --- the arithmetic ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_folded_tensors_equal_peft_merge_and_unload(llama_family, lora_setup, name):
    adapter, peft_merged = lora_setup[name]
    base = load_dir(llama_family[0])
    expected = load_dir(peft_merged)
    model = open_model(f"{llama_family[0]}+{adapter}")
    try:
        assert sorted(model.reader.keys()) == sorted(expected)
        changed = 0
        for tensor_name in model.reader.keys():
            got = model.reader.get(tensor_name)
            assert got.dtype == base[tensor_name].dtype
            torch.testing.assert_close(got, expected[tensor_name], **TOLERANCE, msg=tensor_name)
            changed += not torch.equal(got, base[tensor_name])
    finally:
        model.reader.close()
    # patterns: 4 q + 4 v + 4 down + embed + lm_head; rslora: 4 o + 4 up + 4 gate.
    assert changed == {"patterns": 14, "rslora": 12}[name]


def test_peft_names_with_adapter_segment_are_accepted(llama_family, lora_setup, tmp_path):
    """``.lora_A.default.weight`` (adapter name kept) reads like ``.lora_A.weight``."""
    adapter, peft_merged = lora_setup["rslora"]
    renamed = edited_copy(adapter, tmp_path / "named", rename=lambda n: n.replace(".weight", ".default.weight"))
    model = open_model(f"{llama_family[0]}+{renamed}")
    try:
        name = "model.layers.2.mlp.up_proj.weight"
        torch.testing.assert_close(model.reader.get(name), load_dir(peft_merged)[name], **TOLERANCE)
    finally:
        model.reader.close()


# --- recipes end to end -----------------------------------------------------------------------


def test_string_and_mapping_forms_parse_to_one_key():
    forms = [
        "org/base@v1+org/adapter",
        {"model": "org/base@v1", "lora": "org/adapter"},
        {"model": {"path": "org/base", "revision": "v1"}, "lora": {"path": "org/adapter"}},
    ]
    keys = {parse_recipe({"merge_method": "linear", "models": [{"model": f}]}).models[0].model for f in forms}
    assert keys == {"org/base@v1+org/adapter"}
    with pytest.raises(ConfigError, match=r"models\[0\].model .*more than one '\+'"):
        parse_recipe({"merge_method": "linear", "models": [{"model": "a+b+c"}]})
    with pytest.raises(ConfigError, match="did you mean 'lora'"):
        parse_recipe({"merge_method": "linear", "models": [{"model": {"model": "a", "loar": "b"}}]})


def test_cli_ties_with_adapters_matches_premerged_and_loads(llama_family, lora_setup, tmp_path, capsys):
    """String form and mapping form in one TIES recipe; the same merge on PEFT-merged
    directories gives the same tensors, and transformers loads and runs the output."""
    base, _, ft2 = llama_family
    (patterns, patterns_merged), (rslora, rslora_merged) = lora_setup["patterns"], lora_setup["rslora"]
    recipe = """\
merge_method: ties
base_model: {base}
models:
  - model: {first}
    parameters: {{weight: 0.6, density: 0.7}}
  - model: {second}
    parameters: {{weight: 0.4, density: 0.5}}
  - model: {ft2}
    parameters: {{weight: 0.3, density: 0.9}}
dtype: float32
"""
    with_adapters = tmp_path / "adapters.yml"
    with_adapters.write_text(
        recipe.format(
            base=base,
            ft2=ft2,
            first=f"{base}+{patterns}",
            second=f"{{model: {{path: {base}}}, lora: {{path: {rslora}}}}}",
        )
    )
    premerged = tmp_path / "premerged.yml"
    premerged.write_text(recipe.format(base=base, ft2=ft2, first=patterns_merged, second=rslora_merged))
    cache = tmp_path / "cache"
    code, _, err = cli(capsys, "merge", with_adapters, tmp_path / "out", "--quiet", "--lora-cache", cache)
    assert code == 0, err
    assert cli(capsys, "merge", premerged, tmp_path / "ref", "--quiet")[0] == 0
    ours, ref = load_dir(tmp_path / "out"), load_dir(tmp_path / "ref")
    assert sorted(ours) == sorted(ref)
    for name in ref:
        torch.testing.assert_close(ours[name], ref[name], **TOLERANCE, msg=name)
    assert len(list(cache.iterdir())) == 2  # one cache entry per base+adapter pair
    card = (tmp_path / "out" / "README.md").read_text()
    assert f"{base.name} with the LoRA adapter {rslora.name} merged in" in card and str(base) not in card

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    tokens = AutoTokenizer.from_pretrained(tmp_path / "out")("The quick brown fox", return_tensors="pt")
    with torch.no_grad():
        logits = model(**tokens).logits
    assert logits.shape[-1] == 300 and torch.isfinite(logits).all()


@pytest.mark.mergekit
def test_linear_with_adapter_matches_mergekit(llama_family, lora_setup, tmp_path):
    base, ft1, _ = llama_family
    adapter, _ = lora_setup["patterns"]
    recipe = (
        f"merge_method: linear\nmodels:\n  - model: {base}+{adapter}\n    parameters: {{weight: 0.7}}\n"
        f"  - model: {ft1}\n    parameters: {{weight: 0.3}}\ndtype: float32\n"
    )
    ref = run_mergekit(recipe, tmp_path / "mergekit", extra_args=("--lora-merge-cache", tmp_path / "mk-cache"))
    merge(recipe, tmp_path / "ours", lora_cache=tmp_path / "cache")
    parity = compare(load_dir(tmp_path / "ours"), load_dir(ref))
    assert parity.matches, parity.summary()


# --- the cache --------------------------------------------------------------------------------


def test_cache_is_reused_and_keyed_by_content(llama_family, lora_setup, tmp_path):
    base = llama_family[0]
    adapter = edited_copy(lora_setup["rslora"][0], tmp_path / "adapter")
    recipe = f"merge_method: linear\nmodels:\n  - model: {base}+{adapter}\n    parameters: {{weight: 1.0}}\n"
    cache = tmp_path / "cache"
    merge(recipe, tmp_path / "one", lora_cache=cache)
    (entry,) = cache.iterdir()
    stamp = (entry / "model.safetensors").stat()
    merge(recipe, tmp_path / "two", lora_cache=cache)
    again = (entry / "model.safetensors").stat()
    assert (again.st_ino, again.st_mtime_ns) == (stamp.st_ino, stamp.st_mtime_ns)  # read, not rewritten
    assert [p.name for p in cache.iterdir()] == [entry.name]

    tensors = load_file(adapter / "adapter_model.safetensors")
    name = next(n for n in sorted(tensors) if "lora_B" in n)
    tensors[name] = tensors[name] * 2
    save_file(tensors, adapter / "adapter_model.safetensors")
    merge(recipe, tmp_path / "three", lora_cache=cache)
    assert len(list(cache.iterdir())) == 2  # same paths, new contents: a new entry
    assert not torch.equal(load_dir(tmp_path / "one")[_target(name)], load_dir(tmp_path / "three")[_target(name)])


def test_plan_reads_headers_only_and_writes_no_cache(llama_family, lora_setup, tmp_path, capsys, monkeypatch):
    base, adapter = llama_family[0], lora_setup["patterns"][0]
    monkeypatch.setenv("MERGESMITH_CACHE", str(tmp_path / "cache"))
    recipe = tmp_path / "r.yml"
    recipe.write_text(
        f"merge_method: linear\nmodels:\n  - model: {{model: {base}, lora: {adapter}}}\n"
        "    parameters: {weight: 1.0}\n"
    )
    code, out, err = cli(capsys, "plan", recipe, "--tensors")
    assert code == 0, err
    assert f"{base}+{adapter}:model.layers.0.self_attn.q_proj.weight" in out
    assert not (tmp_path / "cache").exists()


def test_relative_paths_resolve_from_the_recipe_directory(llama_family, lora_setup, tmp_path, capsys):
    root = tmp_path / "project"
    shutil.copytree(llama_family[0], root / "models" / "base")
    shutil.copytree(lora_setup["rslora"][0], root / "adapters" / "rslora")
    (root / "recipe.yml").write_text(
        "merge_method: linear\nmodels:\n  - model: models/base+adapters/rslora\n    parameters: {weight: 1.0}\n"
    )
    code, _, err = cli(
        capsys, "merge", root / "recipe.yml", tmp_path / "out", "--quiet", "--lora-cache", tmp_path / "c"
    )
    assert code == 0, err
    torch.testing.assert_close(load_dir(tmp_path / "out"), load_dir(lora_setup["rslora"][1]), **TOLERANCE)


# --- errors -----------------------------------------------------------------------------------


def edited_copy(src: Path, dst: Path, *, config=None, rename=None) -> Path:
    """A copy of adapter ``src`` with config keys overridden and tensors renamed."""
    shutil.copytree(src, dst)
    if config:
        path = dst / "adapter_config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **config}))
    if rename:
        tensors = load_file(dst / "adapter_model.safetensors")
        save_file({rename(n): t for n, t in tensors.items()}, dst / "adapter_model.safetensors")
    return dst


def _target(adapter_tensor: str) -> str:
    module = adapter_tensor.removeprefix("base_model.model.").split(".lora_")[0]
    return module + ".weight"


BAD_ADAPTERS = {
    "dora": (dict(config={"use_dora": True}), ["adapter_config.json", "use_dora", "plain LoRA"]),
    "ia3": (dict(config={"peft_type": "IA3"}), ["adapter_config.json", "peft_type is 'IA3'", "plain LoRA"]),
    "missing-target": (
        dict(rename=lambda n: n.replace("layers.3.", "layers.7.")),
        [
            "adapter_model.safetensors",
            "base_model.model.model.layers.7.mlp.gate_proj.lora_A.weight",
            "targets model.layers.7.mlp.gate_proj.weight",
        ],
    ),
    "no-peft-prefix": (
        dict(rename=lambda n: n.replace("base_model.model.model.", "")),
        ["adapter_model.safetensors", "targets layers.0.mlp.gate_proj.weight", "does not have"],
    ),
    "rank-mismatch": (dict(config={"r": 6}), ["rank 8", "r = 6"]),
}


@pytest.mark.parametrize("case", sorted(BAD_ADAPTERS))
def test_unusable_adapter_is_one_error_line(llama_family, lora_setup, tmp_path, capsys, case):
    edits, fragments = BAD_ADAPTERS[case]
    adapter = edited_copy(lora_setup["rslora"][0], tmp_path / case, **edits)
    recipe = tmp_path / "r.yml"
    recipe.write_text(
        f"merge_method: linear\nmodels:\n  - model: {llama_family[0]}+{adapter}\n    parameters: {{weight: 1.0}}\n"
    )
    code, _, err = cli(capsys, "merge", recipe, tmp_path / "out", "--lora-cache", tmp_path / "cache")
    one_error_line(code, err, *fragments)
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def test_missing_adapter_directory_is_one_error_line(llama_family, tmp_path, capsys):
    recipe = tmp_path / "r.yml"
    recipe.write_text(
        f"merge_method: linear\nmodels:\n  - model: {llama_family[0]}+./no-such-adapter\n"
        "    parameters: {weight: 1.0}\n"
    )
    code, _, err = cli(capsys, "plan", recipe)
    one_error_line(code, err, "no-such-adapter", "not found")
