"""Bad input end to end: one ``error:`` line naming the culprit and the fix, exit code 2, and
never an output directory or a staging directory left behind.

Every case runs the real CLI in-process (``mergesmith.cli.main.main``) on pico models.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from cli_helpers import (
    LINEAR_TWO,
    assert_nothing_written,
    assert_one_error_line,
    cli,
    copy_model,
    leftovers,
    merge_fails,
    output_tensors,
    rewrite_tensors,
    write_recipe,
)
from safetensors.torch import load_file

from mergesmith.api import merge
from mergesmith.errors import MergesmithError
from mergesmith.execute import runner

# --- 1. missing model path -------------------------------------------------------------------


def test_missing_model_path_names_the_reference_and_where_it_looked(capsys, tmp_path, llama_family):
    base, ft1, _ = llama_family
    line = merge_fails(
        capsys,
        tmp_path,
        LINEAR_TWO.format(a=base, b="no_such_model"),
        "model 'no_such_model' not found",
        str(tmp_path / "no_such_model"),
        "give a local model directory",
    )
    assert str(base) not in line  # the culprit is the missing one, not the good one


# --- 2. unknown key, unknown method -----------------------------------------------------------


def test_unknown_top_level_key_suggests_the_nearest(capsys, tmp_path, llama_family):
    base, ft1, _ = llama_family
    text = LINEAR_TWO.format(a=base, b=ft1) + f"base_modle: {base}\n"
    merge_fails(capsys, tmp_path, text, "recipe.yml", "unknown key 'base_modle'", "did you mean 'base_model'?")


def test_unknown_method_suggests_slerp(capsys, tmp_path, llama_family):
    base, ft1, _ = llama_family
    text = LINEAR_TWO.format(a=base, b=ft1).replace("merge_method: linear", "merge_method: slurp")
    merge_fails(capsys, tmp_path, text, "merge_method", "unknown merge method 'slurp'", "did you mean 'slerp'?")


# --- 3. layer_range out of bounds --------------------------------------------------------------


def test_layer_range_out_of_bounds_names_range_model_and_layer_count(capsys, tmp_path, llama_family):
    base, ft1, _ = llama_family
    text = f"""\
merge_method: slerp
base_model: {base}
parameters: {{t: 0.5}}
slices:
  - sources:
      - model: {base}
        layer_range: [0, 4]
      - model: {ft1}
        layer_range: [0, 40]
"""
    merge_fails(
        capsys,
        tmp_path,
        text,
        "slices[0].sources[1].layer_range [0, 40]",
        f"model '{ft1}'",
        "has 4 layers",
        "0 <= start <= end <= 4",
    )


# --- 4. unequal layer counts in one slice -------------------------------------------------------


def test_slice_sources_of_unequal_length_name_the_slice_and_counts(capsys, tmp_path, llama_family):
    base, ft1, _ = llama_family
    text = f"""\
merge_method: slerp
base_model: {base}
parameters: {{t: 0.5}}
slices:
  - sources:
      - model: {base}
        layer_range: [0, 4]
      - model: {ft1}
        layer_range: [0, 4]
  - sources:
      - model: {base}
        layer_range: [0, 2]
      - model: {ft1}
        layer_range: [1, 4]
"""
    merge_fails(
        capsys,
        tmp_path,
        text,
        "slices[1]",
        f"'{base}' [0, 2) = 2",
        f"'{ft1}' [1, 4) = 3",
        "must cover the same count",
    )


# --- 5. shape mismatch --------------------------------------------------------------------------


@pytest.fixture
def narrow_llama(tmp_path) -> Path:
    """A pico llama whose MLP is 96 wide instead of 128: same family, different size."""
    from pico import build_tokenizer, pico_config
    from transformers import LlamaForCausalLM

    config = pico_config("llama")
    config.intermediate_size = 96
    torch.manual_seed(5)
    path = tmp_path / "narrow"
    LlamaForCausalLM(config).save_pretrained(path)
    build_tokenizer().save_pretrained(path)
    return path


def test_shape_mismatch_names_tensor_both_shapes_and_the_fix(capsys, tmp_path, llama_family, narrow_llama):
    base, _, _ = llama_family
    # up_proj is the first MLP tensor in the llama plan order (arch/data/llama.json).
    merge_fails(
        capsys,
        tmp_path,
        LINEAR_TWO.format(a=base, b=narrow_llama),
        "model.layers.0.mlp.up_proj.weight",
        f"'{base}': [128, 64]",
        f"'{narrow_llama}': [96, 64]",
        "same size",
        "config.json",
        "intermediate_size: 128 vs 96",
    )


def test_shape_mismatch_names_tensor_and_both_shapes(capsys, tmp_path, llama_family, narrow_llama):
    """The part of the message that is already right, pinned so it cannot regress."""
    base, _, _ = llama_family
    merge_fails(
        capsys,
        tmp_path,
        LINEAR_TWO.format(a=base, b=narrow_llama),
        "output tensor model.layers.0.mlp.up_proj.weight has inputs of different shapes",
        f"'{base}': [128, 64]",
        f"'{narrow_llama}': [96, 64]",
    )


# --- 6. missing tensor ---------------------------------------------------------------------------


def test_missing_tensor_names_model_path_and_tensor(capsys, tmp_path, llama_family):
    base, ft1, _ = llama_family
    broken = copy_model(ft1, tmp_path / "broken")
    dropped = "model.layers.2.self_attn.k_proj.weight"
    rewrite_tensors(broken, lambda t: t.pop(dropped))
    merge_fails(
        capsys,
        tmp_path,
        LINEAR_TWO.format(a=base, b=broken),
        f"model '{broken}'",
        f"has no tensor {dropped}",
        "complete llama checkpoint",
    )


# --- 7. unknown dtype ----------------------------------------------------------------------------


def test_unknown_dtype_suggests_bfloat16(capsys, tmp_path, llama_family):
    base, ft1, _ = llama_family
    text = LINEAR_TWO.format(a=base, b=ft1) + "dtype: bf16\n"
    merge_fails(capsys, tmp_path, text, "dtype 'bf16' is not a dtype", "did you mean 'bfloat16'?")


# --- 8. slerp with three models -------------------------------------------------------------------


def test_slerp_with_three_models_says_exactly_two(capsys, tmp_path, llama_family):
    base, ft1, ft2 = llama_family
    text = f"""\
merge_method: slerp
base_model: {base}
parameters: {{t: 0.5}}
models:
  - model: {base}
  - model: {ft1}
  - model: {ft2}
"""
    merge_fails(capsys, tmp_path, text, "merge method 'slerp' takes exactly 2 models, got 3", str(ft2))


# --- 9. output exists ------------------------------------------------------------------------------


def test_existing_output_is_refused_untouched_then_replaced_with_force(capsys, tmp_path, llama_family):
    base, ft1, _ = llama_family
    recipe = write_recipe(tmp_path, LINEAR_TWO.format(a=base, b=ft1))
    out = tmp_path / "out"
    out.mkdir()
    (out / "marker.txt").write_text("keep me")

    assert_one_error_line(
        *cli(capsys, "merge", recipe, out, "--quiet"),
        f"{out} already exists",
        "set force (--force)",
    )
    assert sorted(p.name for p in out.iterdir()) == ["marker.txt"]
    assert (out / "marker.txt").read_text() == "keep me"
    assert leftovers(out) == []

    code, _, err = cli(capsys, "merge", recipe, out, "--quiet", "--force")
    assert code == 0, err
    assert not (out / "marker.txt").exists()
    assert (out / "config.json").is_file()
    assert output_tensors(out)  # a real merge landed, not an empty directory
    assert leftovers(out) == []


# --- 10. pickle-only checkpoint ---------------------------------------------------------------------


@pytest.fixture
def pickle_ft1(tmp_path, llama_family) -> Path:
    """ft1 with its weights as pytorch_model.bin only (same config and tokenizer)."""
    ft1 = llama_family[1]
    path = copy_model(ft1, tmp_path / "ft1_bin")
    torch.save(load_file(path / "model.safetensors"), path / "pytorch_model.bin")
    (path / "model.safetensors").unlink()
    return path


def test_pickle_checkpoint_refused_without_allow_pickle(capsys, tmp_path, llama_family, pickle_ft1):
    base = llama_family[0]
    merge_fails(
        capsys,
        tmp_path,
        LINEAR_TWO.format(a=base, b=pickle_ft1),
        f"model '{pickle_ft1}'",
        "pickle .bin",
        "can run code",
        "--allow-pickle",
    )


def test_pickle_checkpoint_with_allow_pickle_merges_like_safetensors(capsys, tmp_path, llama_family, pickle_ft1):
    base, ft1, _ = llama_family
    from_bin, from_st = tmp_path / "from_bin", tmp_path / "from_st"
    bin_recipe = write_recipe(tmp_path, LINEAR_TWO.format(a=base, b=pickle_ft1), "bin.yml")
    st_recipe = write_recipe(tmp_path, LINEAR_TWO.format(a=base, b=ft1), "st.yml")

    code, _, err = cli(capsys, "merge", bin_recipe, from_bin, "--quiet", "--allow-pickle")
    assert code == 0, err
    code, _, err = cli(capsys, "merge", st_recipe, from_st, "--quiet")
    assert code == 0, err

    got, want = output_tensors(from_bin), output_tensors(from_st)
    assert sorted(got) == sorted(want)
    for name in want:
        assert torch.equal(got[name], want[name]), name
    # The merge is not trivially one of its inputs.
    assert not torch.equal(want["model.norm.weight"], load_file(base / "model.safetensors")["model.norm.weight"])


# --- 11. failure during execution --------------------------------------------------------------------


def fail_on_call(monkeypatch, n: int, error: BaseException) -> list[int]:
    """Make the runner's n-th job raise ``error`` (every job, streamed or whole, goes through
    ``runner._write_job``); returns the call counter."""
    real = runner._write_job
    calls: list[int] = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "_write_job", flaky)
    return calls


@pytest.mark.parametrize("error", [MergesmithError("boom on the 5th tensor"), RuntimeError("disk on fire")])
def test_failure_during_execution_leaves_no_partial_output(monkeypatch, tmp_path, llama_family, error):
    base, ft1, _ = llama_family
    recipe = write_recipe(tmp_path, LINEAR_TWO.format(a=base, b=ft1))
    out = tmp_path / "out"
    calls = fail_on_call(monkeypatch, 5, error)
    with pytest.raises(type(error), match=str(error)):
        merge(recipe, out)
    # it really failed mid-execution; with two workers one more job may already have started
    assert 5 <= len(calls) <= 6
    assert_nothing_written(out)


def test_failure_during_forced_replacement_keeps_the_old_output(monkeypatch, tmp_path, llama_family):
    base, ft1, _ = llama_family
    recipe = write_recipe(tmp_path, LINEAR_TWO.format(a=base, b=ft1))
    out = tmp_path / "out"
    out.mkdir()
    (out / "marker.txt").write_text("previous merge")
    fail_on_call(monkeypatch, 5, MergesmithError("boom"))
    with pytest.raises(MergesmithError, match="boom"):
        merge(recipe, out, force=True)
    assert sorted(p.name for p in out.iterdir()) == ["marker.txt"]
    assert leftovers(out) == []


def test_cli_execution_failure_is_one_line_and_exit_2(capsys, monkeypatch, tmp_path, llama_family):
    base, ft1, _ = llama_family
    recipe = write_recipe(tmp_path, LINEAR_TWO.format(a=base, b=ft1))
    out = tmp_path / "out"
    fail_on_call(monkeypatch, 5, MergesmithError("model.layers.0.self_attn.o_proj.weight: cannot read"))
    assert_one_error_line(*cli(capsys, "merge", recipe, out, "--quiet"), "o_proj.weight: cannot read")
    assert_nothing_written(out)


def test_cli_execution_failure_with_progress_bar_ends_on_the_error_line(capsys, monkeypatch, tmp_path, llama_family):
    """The progress bar may stay, but the error must be a line of its own, and the last one."""
    base, ft1, _ = llama_family
    recipe = write_recipe(tmp_path, LINEAR_TWO.format(a=base, b=ft1))
    out = tmp_path / "out"
    fail_on_call(monkeypatch, 5, MergesmithError("boom"))
    code, stdout, stderr = cli(capsys, "merge", recipe, out)
    assert code == 2 and stdout == ""
    last = re.split(r"[\r\n]", stderr.rstrip("\n"))[-1]
    assert last == "error: boom", repr(stderr)
    assert_nothing_written(out)


# --- 12. required parameter missing --------------------------------------------------------------------


def test_ties_without_weight_names_the_parameter_and_the_model(capsys, tmp_path, llama_family):
    base, ft1, ft2 = llama_family
    text = f"""\
merge_method: ties
base_model: {base}
models:
  - model: {base}
  - model: {ft1}
    parameters: {{weight: 0.5, density: 0.5}}
  - model: {ft2}
    parameters: {{density: 0.5}}
"""
    line = merge_fails(
        capsys,
        tmp_path,
        text,
        "merge method 'ties' needs parameter 'weight'",
        f"for model '{ft2}'",
        "set it under that model's parameters or the top-level parameters",
    )
    assert f"model '{ft1}'" not in line


# --- 13. slerp without base_model ------------------------------------------------------------------------


def test_slerp_without_base_model_asks_for_one(capsys, tmp_path, llama_family):
    base, ft1, _ = llama_family
    text = f"""\
merge_method: slerp
parameters: {{t: 0.5}}
models:
  - model: {base}
  - model: {ft1}
"""
    merge_fails(capsys, tmp_path, text, "merge method 'slerp' needs a base_model", str(ft1), "set base_model")


# --- plan subcommand ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tail,fragment",
    [
        ("base_modle: x\n", "did you mean 'base_model'?"),
        ("dtype: bf16\n", "did you mean 'bfloat16'?"),
    ],
)
def test_plan_on_a_bad_recipe_is_one_line_and_exit_2(capsys, tmp_path, llama_family, tail, fragment):
    base, ft1, _ = llama_family
    recipe = write_recipe(tmp_path, LINEAR_TWO.format(a=base, b=ft1) + tail)
    assert_one_error_line(*cli(capsys, "plan", recipe), str(recipe), fragment)


def test_plan_with_an_unknown_method_is_one_line_and_exit_2(capsys, tmp_path, llama_family):
    base, ft1, _ = llama_family
    text = LINEAR_TWO.format(a=base, b=ft1).replace("merge_method: linear", "merge_method: slurp")
    recipe = write_recipe(tmp_path, text)
    assert_one_error_line(*cli(capsys, "plan", recipe), "unknown merge method 'slurp'", "did you mean 'slerp'?")
