"""`mergesmith plan`'s default view: the layer map, within 100 columns, with each parameter's values
across the layers of a run grouped by the tensors that share them."""

from __future__ import annotations

from pathlib import Path

from recipes import slerp_recipe

from mergesmith.cli.main import main
from mergesmith.plan.layer_map import short_names

STACK = """\
merge_method: passthrough
slices:
  - sources: [{{model: {a}, layer_range: [0, 3]}}]
  - sources: [{{model: {b}, layer_range: [1, 4]}}]
    parameters:
      scale:
        - filter: o_proj
          value: 0.5
        - filter: down_proj
          value: 0.5
        - value: 1
"""


def view(capsys, tmp_path: Path, text: str, *flags) -> list[str]:
    recipe = tmp_path / "r.yml"
    recipe.write_text(text)
    capsys.readouterr()
    assert main(["plan", str(recipe), *flags]) == 0
    return capsys.readouterr().out.splitlines()


def test_slerp_gradients_per_filter_across_the_layers(capsys, tmp_path, llama_family):
    a, b = llama_family[:2]
    lines = view(capsys, tmp_path, slerp_recipe(a, b, 4, "bfloat16"))
    assert all(len(line) <= 100 for line in lines)
    assert "  layers 0–3 ← base [0–3] + ft1 [0–3]: slerp" in lines
    # Four layers at t = 0, 1/3, 2/3, 1 of the gradient [0, 0.5, 0.3, 0.7, 1] (mergekit's rule):
    # 0, 0.5 + (0.3 - 0.5) * (1/3 * 4 - 1), ..., 1.
    second = 0.5 + (0.3 - 0.5) * (4 / 3 - 1)
    third = 0.3 + (0.7 - 0.3) * (8 / 3 - 2)
    assert f"    t self_attn.*: 0 → {second:.4g} → {third:.4g} → 1" in lines
    assert f"    t mlp.*: 1 → {1 - second:.4g} → {1 - third:.4g} → 0" in lines
    assert any(line.startswith("    t ") and line.endswith(": 0.5") for line in lines)
    assert "  model.embed_tokens.weight ← base + ft1: slerp (t=0.5)" in lines


def test_a_frankenmerge_shows_which_source_layers_land_where(capsys, tmp_path, llama_family):
    a, b = llama_family[:2]
    lines = view(capsys, tmp_path, STACK.format(a=a, b=b))
    assert "  layers 0–2 ← base [0–2]: passthrough" in lines
    assert "  layers 3–5 ← ft1 [1–3]: passthrough" in lines
    assert "    scale[ft1] mlp.down_proj.weight, self_attn.o_proj.weight: 0.5" in lines


def test_tensors_and_json_keep_every_tensor(capsys, tmp_path, llama_family):
    a, b = llama_family[:2]
    table = view(capsys, tmp_path, slerp_recipe(a, b, 4, "bfloat16"), "--tensors")
    assert sum("\tslerp\t" in line for line in table) == 39  # pico llama, 4 layers: 4 * 9 + 3
    assert view(capsys, tmp_path, slerp_recipe(a, b, 4, "bfloat16"), "--json")[0] == "{"


def test_short_names_keep_whole_keys_where_they_would_clash():
    assert short_names(["/x/base", "/y/ft", "/z/base+/a/lora"]) == {
        "/x/base": "base",
        "/y/ft": "ft",
        "/z/base+/a/lora": "base+lora",
    }
    assert short_names(["/x/model", "/y/model"]) == {"/x/model": "/x/model", "/y/model": "/y/model"}
