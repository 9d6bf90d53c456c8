"""A MoE config as the last document of a lineage: experts that are merge stages (moe/stages.py)."""

from __future__ import annotations

import yaml
from cli_helpers import assert_one_error_line, cli, output_tensors
from moe_configs import moe_config

from mergesmith.api import merge


def _lineage_file(tmp_path, base, ft1, ft2, moe: dict | None = None):
    """Stage 'mix' (linear of ft1, ft2), stage 'deep' (slerp of mix and ft2 over base: a stage of a
    stage), then a MoE of the base, mix and deep."""
    mix = {
        "name": "mix",
        "merge_method": "linear",
        "models": [
            {"model": str(ft1), "parameters": {"weight": 0.5}},
            {"model": str(ft2), "parameters": {"weight": 0.5}},
        ],
    }
    deep = {
        "name": "deep",
        "merge_method": "slerp",
        "base_model": "mix",
        "models": [{"model": "mix"}, {"model": str(ft2)}],
        "parameters": {"t": 0.3},
    }
    config = moe or moe_config(base, ["mix", "deep", base])
    path = tmp_path / "moe-lineage.yml"
    path.write_text(yaml.safe_dump_all([mix, deep, config], sort_keys=False), encoding="utf-8")
    return path, mix, deep


def _recipe_text(doc: dict, swap: dict) -> str:
    doc = {k: v for k, v in doc.items() if k != "name"}
    for key in ("base_model",):
        if key in doc:
            doc[key] = swap.get(doc[key], doc[key])
    doc["models"] = [{**m, "model": swap.get(m["model"], m["model"])} for m in doc["models"]]
    return yaml.safe_dump(doc, sort_keys=False)


def test_experts_that_are_stages_are_built_then_copied(llama_family, tmp_path, capsys):
    base, ft1, ft2 = llama_family
    path, mix, deep = _lineage_file(tmp_path, base, ft1, ft2)
    code, out, err = cli(capsys, "moe", path, tmp_path / "out")
    assert code == 0, err
    stages = tmp_path / "out.stages"
    assert "stage mix: merged" in out and "stage deep: merged" in out
    # Each stage is the merge its recipe makes on its own.
    merge(_recipe_text(mix, {}), tmp_path / "mix-ref")
    merge(_recipe_text(deep, {"mix": str(tmp_path / "mix-ref")}), tmp_path / "deep-ref")
    for name in ("mix", "deep"):
        got, ref = output_tensors(stages / name), output_tensors(tmp_path / f"{name}-ref")
        assert got.keys() == ref.keys() and all(got[k].equal(ref[k]) for k in ref), name
    # The MoE's experts 0 and 1 are the stages' MLPs, expert 2 the base's.
    moe, deep_ref, mix_ref = (
        output_tensors(tmp_path / "out"),
        output_tensors(stages / "deep"),
        output_tensors(stages / "mix"),
    )
    for e, src in enumerate((mix_ref, deep_ref, output_tensors(base))):
        name = f"model.layers.1.block_sparse_moe.experts.{e}.w2.weight"
        assert moe[name].equal(src["model.layers.1.mlp.down_proj.weight"]), name
    assert "source_model: mix" in (tmp_path / "out" / "README.md").read_text()  # the file as written
    # A second run keeps the up-to-date stages and rebuilds only the MoE.
    code, out, err = cli(capsys, "moe", path, tmp_path / "out", "--force")
    assert code == 0, err
    assert "stage mix: merged" in out  # --force rebuilds the stages too
    code, out, err = cli(capsys, "moe", path, tmp_path / "out2", "--intermediate-dir", stages)
    assert code == 0, err
    assert "stage mix: up to date" in out and "stage deep: up to date" in out


def test_plan_shows_each_stage_before_anything_is_built(llama_family, tmp_path, capsys):
    base, ft1, ft2 = llama_family
    path, _, _ = _lineage_file(tmp_path, base, ft1, ft2)
    code, out, err = cli(capsys, "plan", path)
    assert code == 0, err
    assert "merge stages mix, deep" in out and "## stage mix (for the MoE's 'mix')" in out
    assert "## stage deep (for the MoE's 'deep')" in out and not (tmp_path / "moe-lineage.stages").exists()


def test_bad_moe_config_fails_before_any_stage_is_built(llama_family, tmp_path, capsys):
    base, ft1, ft2 = llama_family
    bad = moe_config(base, ["mix", "deep"], experts_per_token=5)
    path, _, _ = _lineage_file(tmp_path, base, ft1, ft2, bad)
    code, out, err = cli(capsys, "moe", path, tmp_path / "out")
    assert_one_error_line(code, out, err, "experts_per_token")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.stages").exists()


def test_unnamed_stage_and_unused_stages_are_one_line(llama_family, tmp_path, capsys):
    base, ft1, ft2 = llama_family
    path, mix, deep = _lineage_file(tmp_path, base, ft1, ft2)
    docs = list(yaml.safe_load_all(path.read_text()))
    docs[0].pop("name")
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    code, out, err = cli(capsys, "moe", path, tmp_path / "out")
    assert_one_error_line(code, out, err, "document 1 has no 'name'")
    path, _, _ = _lineage_file(tmp_path, base, ft1, ft2, moe_config(base, [ft1, ft2]))
    code, out, err = cli(capsys, "moe", path, tmp_path / "out")
    assert_one_error_line(code, out, err, "names none of the stages")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.stages").exists()
