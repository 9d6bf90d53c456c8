"""Architectures without a data file: inferred from tensor names, with one warning, or refused.

End to end, a llama pico renamed to ``PicoNovelForCausalLM`` must merge to exactly the tensors
the llama definition gives on the original; the rules themselves are checked on name lists.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from reference import load_dir
from safetensors.torch import save_file

from mergesmith.api import merge
from mergesmith.arch.infer import infer_arch
from mergesmith.cli.main import main
from mergesmith.errors import ArchitectureError

NOVEL = "PicoNovelForCausalLM"
SLERP = """\
merge_method: slerp
base_model: {a}
slices:
  - sources:
      - model: {a}
        layer_range: [0, 4]
      - model: {b}
        layer_range: [0, 4]
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - value: 0.3
dtype: bfloat16
"""
STACK = """\
merge_method: passthrough
slices:
  - sources:
      - model: {a}
        layer_range: [0, 3]
  - sources:
      - model: {b}
        layer_range: [1, 4]
"""


def _cli(capsys, *argv) -> tuple[int, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def _renamed(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config.update(architectures=[NOVEL], model_type="piconovel")
    (dst / "config.json").write_text(json.dumps(config))
    return dst


@pytest.fixture(scope="module")
def novel(llama_family, tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("novel")
    return [_renamed(p, root / p.name) for p in llama_family[:2]]


@pytest.mark.parametrize("recipe,layers", [(SLERP, 4), (STACK, 6)], ids=["slerp", "stack"])
def test_unknown_architecture_merges_like_its_definition(recipe, layers, novel, llama_family, tmp_path, capsys):
    text = recipe.format(a=novel[0], b=novel[1])
    (tmp_path / "recipe.yml").write_text(text)
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # one line for two inputs even so
        code, err = _cli(capsys, "merge", tmp_path / "recipe.yml", tmp_path / "out", "--quiet")
    assert code == 0, err
    warned = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warned) == 1, err
    assert NOVEL in warned[0] and "inferred from its tensor names" in warned[0] and "mergesmith/arch/data/" in warned[0]
    merge(recipe.format(a=llama_family[0], b=llama_family[1]), tmp_path / "llama")
    ours, ref = load_dir(tmp_path / "out"), load_dir(tmp_path / "llama")
    assert set(ours) == set(ref)
    assert all(torch.equal(ours[n], ref[n]) for n in ref)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["architectures"] == [NOVEL] and config["num_hidden_layers"] == layers


def test_uninferable_input_is_one_error_line(tmp_path, capsys):
    model = tmp_path / "blob"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"architectures": ["BlobModel"], "num_hidden_layers": 2}))
    save_file({"encoder.weight": torch.zeros(4, 4), "decoder.weight": torch.zeros(4, 4)}, model / "model.safetensors")
    (tmp_path / "recipe.yml").write_text(f"merge_method: passthrough\nmodels:\n  - model: {model}\n")
    code, err = _cli(capsys, "merge", tmp_path / "recipe.yml", tmp_path / "out", "--quiet")
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert "BlobModel" in err and "cannot be inferred" in err and "no tensor name has a layer index" in err
    assert str(model) in err and "decoder.weight" in err
    assert not (tmp_path / "out").exists()


# --- the rules on name lists -------------------------------------------------------------

V, H = 50, 8  # vocabulary and hidden size of the synthetic name lists


def _shapes(layers: int, per_layer=("attn.w", "mlp.w"), prefix="blocks", extra=None) -> dict:
    shapes = {f"{prefix}.{i}.{rest}": (H, H) for i in range(layers) for rest in per_layer}
    shapes.update(extra if extra is not None else {"tok_embed.weight": (V, H), "out_norm.weight": (H,)})
    return shapes


def test_globals_are_split_by_name_and_vocab_axis():
    shapes = _shapes(
        3,
        extra={
            "gpt_neox.embed_in.weight": (V, H),
            "gpt_neox.final_layer_norm.weight": (H,),
            "embed_out.weight": (V, H),
            "pos_embed.weight": (16, H),
        },
    )
    spec = infer_arch({"architectures": ["X"], "n_layer": 3, "vocab_size": V}, shapes, "m")
    assert {w.name: (w.role, w.vocab_axis) for w in spec.pre} == {
        "gpt_neox.embed_in.weight": ("embed", 0),
        "pos_embed.weight": ("embed_extra", None),
    }
    post = {w.name: w for w in spec.post}
    assert post["embed_out.weight"].tied_to == ("gpt_neox.embed_in.weight",) and post["embed_out.weight"].optional
    assert post["gpt_neox.final_layer_norm.weight"].role == "final_norm"
    assert spec.num_layers_key == "n_layer"
    assert [w.name for w in spec.layer] == ["blocks.{layer}.attn.w", "blocks.{layer}.mlp.w"]


def test_per_layer_lists_follow_the_layers():
    config = {
        "architectures": ["X"],
        "num_layers": 3,
        "vocab_size": V,
        "layer_types": ["a", "b", "a"],
        "eos_token_id": [1, 2, 3],
    }
    assert infer_arch(config, _shapes(3), "m").per_layer_keys == ("layer_types",)


@pytest.mark.parametrize(
    "shapes,config,fragment",
    [
        (_shapes(2, extra={"blocks.1.extra.w": (H,)}), {}, "'blocks.1' has blocks.1.extra.w"),
        ({k: v for k, v in _shapes(3).items() if k != "blocks.2.mlp.w"}, {}, "'blocks.2' lacks blocks.2.mlp.w"),
        ({k: v for k, v in _shapes(3).items() if not k.startswith("blocks.1.")}, {}, "none numbered [1]"),
        (_shapes(3), {"num_hidden_layers": 4}, "no layer count equal to 3"),
        (_shapes(3, extra={"vision.layers.0.w": (H,), "tok_embed.weight": (V, H)}), {}, "more than one layer stack"),
        (_shapes(3), {"tie_word_embeddings": False}, "tie_word_embeddings false but no tensor after the layers"),
    ],
    ids=["extra", "missing", "gap", "count", "stacks", "untied"],
)
def test_uninferable(shapes, config, fragment):
    config = {"architectures": ["Odd"], "num_hidden_layers": 3, "vocab_size": V, **config}
    with pytest.raises(ArchitectureError) as info:
        infer_arch(config, shapes, "model 'odd' (/m)")
    message = str(info.value)
    assert fragment in message and "model 'odd' (/m)" in message and "'Odd'" in message and "\n" not in message
