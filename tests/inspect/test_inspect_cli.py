"""`mergesmith inspect` through its own parser: JSON and PNG outputs, recipe schedules, and bad input
as one typed error naming the culprit, with nothing written."""

from __future__ import annotations

import argparse
import json
import shutil

import pytest
import torch
from inspect_png import png_size
from recipes import slerp_recipe
from safetensors.torch import load_file, save_file

from mergesmith.cli import inspect_cmd
from mergesmith.errors import (
    ConfigError,
    InputFormatError,
    NonFiniteError,
    OutputWriteError,
    ShapeMismatchError,
    UnsafeOutputError,
)
from mergesmith.inspect.plot import heatmap_size, schedule_size

T_ATTN, T_MLP = [0, 0.5, 0.3, 0.7, 1], [1, 0.5, 0.7, 0.3, 0]


def inspect(*argv):
    parser = argparse.ArgumentParser(prog="mergesmith")
    inspect_cmd.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["inspect", *map(str, argv)])
    return args.handler(args)


def test_help_reads_like_the_other_commands():
    """What tests/cli/test_cli_consistency.py asks of every registered command."""
    parser = argparse.ArgumentParser(prog="mergesmith")
    inspect_cmd.add_parser(parser.add_subparsers(dest="command"))
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["inspect"]
    assert len(sub.description) <= 78 and sub.description.endswith(".")
    flags = {flag: a for a in sub._actions for flag in a.option_strings}
    assert flags["--quiet"].help.startswith("no progress output") and "--log-format" not in flags


def test_models_json_and_heatmap(llama_family, tmp_path, capsys):
    base, ft1, ft2 = llama_family
    out_json, out_png = tmp_path / "i.json", tmp_path / "i.png"
    assert inspect(ft1, ft2, "--base", base, "--json", out_json, "--plot", out_png, "--quiet") == 0
    data = json.loads(out_json.read_text())
    assert data["models"] == [str(ft1), str(ft2)] and data["base"] == str(base)
    assert set(data["rows"][0]) >= {
        "name",
        "layer",
        "module",
        "cosine",
        "rel_l2",
        "delta_norm",
        "sign_agreement",
        "topk_energy",
    }
    assert len(data["rows"]) == len(load_file(str(base / "model.safetensors")))
    # 4 layers + global, 5 module types (attention, mlp, norm, embedding, head), one pair
    assert png_size(out_png) == heatmap_size(5, 5, 1) == (640, 320)
    text = capsys.readouterr().out
    assert "cosine similarity of the deltas: ft1 vs ft2" in text and max(map(len, text.splitlines())) <= 100
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


def test_three_models_without_base_plot_a_panel_per_pair(llama_family, tmp_path):
    out_png = tmp_path / "three.png"
    assert inspect(*llama_family, "--plot", out_png, "--quiet") == 0
    assert png_size(out_png) == heatmap_size(5, 5, 3) == (640, 860)


def gradient(anchors, i, n):
    """mergekit's rule, written out again: layer i of n at x = i/(n-1) on the anchors' polyline."""
    x = i / (n - 1) * (len(anchors) - 1)
    lo = min(int(x), len(anchors) - 2)
    return anchors[lo] + (x - lo) * (anchors[lo + 1] - anchors[lo])


def test_slerp_schedule_lines(llama10, tmp_path, capsys):
    recipe = tmp_path / "slerp.yml"
    recipe.write_text(slerp_recipe(*llama10, 10, "bfloat16"))
    out_json, out_png = tmp_path / "s.json", tmp_path / "s.png"
    assert inspect(recipe, "--json", out_json, "--plot", out_png) == 0
    data = json.loads(out_json.read_text())
    lines = {(s["param"], s["filter"]): s["values"] for s in data["series"]}
    assert set(lines) == {("t", "self_attn"), ("t", "mlp"), ("t", "rest")}
    assert lines[("t", "self_attn")] == pytest.approx([gradient(T_ATTN, i, 10) for i in range(10)])
    assert lines[("t", "mlp")] == pytest.approx([gradient(T_MLP, i, 10) for i in range(10)])
    assert lines[("t", "rest")] == [0.5] * 10 and data["stack"] is None
    assert png_size(out_png) == schedule_size(1) == (800, 300)
    assert "t self_attn" in capsys.readouterr().out


def test_passthrough_stack_map(llama10, tmp_path):
    model = llama10[0]
    recipe = tmp_path / "stack.yml"
    recipe.write_text(f"""
slices:
  - sources: [{{model: {model}, layer_range: [0, 6]}}]
  - sources:
      - model: {model}
        layer_range: [3, 6]
        parameters: {{scale: [{{filter: o_proj, value: 0.5}}, {{value: 1.0}}]}}
  - sources: [{{model: {model}, layer_range: [6, 10]}}]
merge_method: passthrough
""")
    out_json, out_png = tmp_path / "m.json", tmp_path / "m.png"
    assert inspect(recipe, "--json", out_json, "--plot", out_png, "--quiet") == 0
    data = json.loads(out_json.read_text())
    assert [s["source_layer"] for s in data["stack"]] == [0, 1, 2, 3, 4, 5, 3, 4, 5, 6, 7, 8, 9]
    scale = {s["filter"]: s["values"] for s in data["series"] if s["param"] == "scale"}
    assert scale["o_proj"] == [None] * 6 + [0.5] * 3 + [None] * 4
    assert scale["rest"] == [None] * 6 + [1.0] * 3 + [None] * 4
    assert png_size(out_png) == schedule_size(2)  # the scale panel and the stack map


def broken_copy(src, dst, name, tensor):
    shutil.copytree(src, dst)
    tensors = load_file(str(dst / "model.safetensors"))
    tensors[name] = tensor(tensors[name])
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


@pytest.mark.parametrize(
    "case, error, culprit",
    [
        ("missing", InputFormatError, "nope"),
        ("shape", ShapeMismatchError, "model.layers.1.mlp.up_proj.weight"),
        ("nan", NonFiniteError, "model.layers.1.mlp.up_proj.weight"),
        ("one model", ConfigError, "--base"),
        ("json folder missing", OutputWriteError, "no/such/folder"),
        ("json is a folder", OutputWriteError, "is a directory"),
        ("plot not png", ConfigError, ".png"),
        ("plot inside an input", UnsafeOutputError, "lies inside"),
        ("base on a recipe", ConfigError, "--base"),
        ("top-k 0", ConfigError, "--top-k"),
    ],
)
def test_bad_input_is_one_typed_line(llama_family, tmp_path, case, error, culprit):
    base, ft1, ft2 = llama_family
    name = "model.layers.1.mlp.up_proj.weight"
    argv = {
        "missing": [ft1, tmp_path / "nope"],
        "shape": [ft1, broken_copy(ft2, tmp_path / "short", name, lambda t: t[:-1].clone())],
        "nan": [
            ft1,
            broken_copy(ft2, tmp_path / "nan", name, lambda t: t.index_fill(0, torch.tensor([0]), float("nan"))),
        ],
        "one model": [ft1],
        "json folder missing": [ft1, ft2, "--json", tmp_path / "no/such/folder/x.json"],
        "json is a folder": [ft1, ft2, "--json", tmp_path],
        "plot not png": [ft1, ft2, "--plot", tmp_path / "x.jpg"],
        "plot inside an input": [ft1, ft2, "--plot", ft1 / "x.png"],
        "base on a recipe": [tmp_path / "r.yml", "--base", base],
        "top-k 0": [ft1, ft2, "--base", base, "--top-k", "0"],
    }[case]
    (tmp_path / "lineage.yml").write_text(
        f"name: c\nmerge_method: linear\nmodels: [{{model: {ft1}}}]\n---\n"
        "merge_method: passthrough\nmodels: [{model: c}]\n"
    )
    with pytest.raises(error) as caught:
        inspect(*argv, "--quiet")
    message = str(caught.value)
    assert culprit in message and "\n" not in message
    assert not list(tmp_path.glob("*.json")) and not list(tmp_path.glob("*.png")) and not list(ft1.glob("*.png"))


def test_a_lineage_shows_every_stage(llama_family, tmp_path):
    """Stage outputs appear by name; --plot draws the final merge and each named stage beside it."""
    base, ft1, ft2 = llama_family
    lineage = tmp_path / "lineage.yml"
    lineage.write_text(
        f"name: c\nmerge_method: linear\nmodels: [{{model: {ft1}, parameters: {{weight: 0.5}}}},"
        f" {{model: {ft2}, parameters: {{weight: 0.5}}}}]\n---\n"
        f"merge_method: slerp\nbase_model: {base}\nmodels: [{{model: {base}}}, {{model: c}}]\n"
        "parameters: {t: [0, 1]}\n"
    )
    inspect(lineage, "--json", tmp_path / "s.json", "--plot", tmp_path / "s.png", "--quiet")
    stages = json.loads((tmp_path / "s.json").read_text())["stages"]
    assert len(stages) == 2 and stages[0]["stage"] == "c" and stages[1]["method"] == "slerp"
    assert png_size(tmp_path / "s.png")[0] > 0 and png_size(tmp_path / "s.c.png")[0] > 0
