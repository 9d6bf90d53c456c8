"""The reliability contract on ``mergesmith merge``: inputs are never harmed, bad values anywhere in
a recipe are refused, and failures (write errors, crashes, Ctrl-C, a second run on the same output)
end in one line with nothing incomplete under the output's name.

Each test would fail without the check it names: the cases are the classes found by trying
bad inputs as a new user would.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
import textwrap
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

from mergesmith.api import merge
from mergesmith.errors import NonFiniteError, OutputExistsError
from mergesmith.execute import runner


def digest(path: Path) -> dict[str, str]:
    """sha256 of every file under ``path``: inputs must come out byte-identical."""
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


SLERP = """\
merge_method: slerp
base_model: {a}
models: [{{model: {a}}}, {{model: {b}}}]
parameters:
  t: {t}
"""


# --- the output never is, holds or lies inside an input --------------------------------------


@pytest.mark.parametrize("force", [False, True])
def test_output_equal_to_an_input_is_refused_and_the_input_untouched(capsys, tmp_path, llama_family, force):
    base = copy_model(llama_family[0], tmp_path / "base")
    before = digest(base)
    recipe = write_recipe(tmp_path, LINEAR_TWO.format(a=base, b=llama_family[1]))
    flags = ["--force"] if force else []
    assert_one_error_line(*cli(capsys, "merge", recipe, base, "--quiet", *flags), f"output {base} is", "model '")
    assert digest(base) == before and leftovers(base) == []


def test_output_through_a_symlink_to_an_input_is_refused(capsys, tmp_path, llama_family):
    base = copy_model(llama_family[0], tmp_path / "base")
    before = digest(base)
    link = tmp_path / "link"
    link.symlink_to(base, target_is_directory=True)
    recipe = write_recipe(tmp_path, LINEAR_TWO.format(a=base, b=llama_family[1]))
    assert_one_error_line(*cli(capsys, "merge", recipe, link, "--quiet", "--force"), "choose an output path outside")
    assert digest(base) == before and link.is_symlink()


def test_output_inside_an_input_is_refused_and_nothing_written_there(capsys, tmp_path, llama_family):
    base = copy_model(llama_family[0], tmp_path / "models" / "a")
    before = digest(base)
    recipe = write_recipe(tmp_path, LINEAR_TWO.format(a=base, b=llama_family[1]))
    out = base / "merged"
    assert_one_error_line(*cli(capsys, "merge", recipe, out, "--quiet"), "lies inside", "model '")
    assert digest(base) == before
    assert sorted(p.name for p in base.iterdir()) == sorted(p.name for p in llama_family[0].iterdir())


def test_output_holding_an_input_is_refused_even_with_force(capsys, tmp_path, llama_family):
    models = tmp_path / "models"
    base = copy_model(llama_family[0], models / "a")
    before = digest(models)
    recipe = write_recipe(tmp_path, LINEAR_TWO.format(a=base, b=llama_family[1]))
    assert_one_error_line(*cli(capsys, "merge", recipe, models, "--quiet", "--force"), "contains", "model '")
    assert digest(models) == before


def test_output_holding_the_recipe_is_refused_with_force(capsys, tmp_path, llama_family):
    work = tmp_path / "work"
    work.mkdir()
    recipe = write_recipe(work, LINEAR_TWO.format(a=llama_family[0], b=llama_family[1]))
    assert_one_error_line(*cli(capsys, "merge", recipe, work, "--quiet", "--force"), "contains the recipe")
    assert recipe.is_file()


def test_relative_input_found_beside_the_recipe_is_protected(capsys, tmp_path, llama_family, monkeypatch):
    """A relative model path resolved from the recipe's folder is an input like any other."""
    project = tmp_path / "project"
    copy_model(llama_family[0], project / "a")
    before = digest(project / "a")
    recipe = write_recipe(project, LINEAR_TWO.format(a="a", b=llama_family[1]))
    monkeypatch.chdir(tmp_path)
    assert_one_error_line(*cli(capsys, "merge", recipe, project / "a" / "out", "--quiet"), "lies inside")
    assert digest(project / "a") == before


# --- parameters: names and values in every scope -------------------------------------------------


TIES = """\
merge_method: ties
base_model: {a}
models:
  - model: {a}
  - model: {b}
    parameters: {{weight: 1.0, density: 0.5{extra}}}
parameters: {{normalize: true{top}}}
"""


@pytest.mark.parametrize(
    "extra, top, where",
    [
        (", densty: 0.5", "", "models[1].parameters.densty"),
        ("", ", densty: 0.5", "parameters.densty"),
    ],
)
def test_unknown_parameter_name_is_refused_with_the_nearest(capsys, tmp_path, llama_family, extra, top, where):
    a, b = llama_family[:2]
    line = merge_fails(capsys, tmp_path, TIES.format(a=a, b=b, extra=extra, top=top), where, "did you mean 'density'")
    assert "'ties'" in line


def test_unknown_parameter_in_a_slice_and_its_source_is_refused(capsys, tmp_path, llama_family):
    a, b = llama_family[:2]
    for slice_params, source_params, where in [
        ("{tt: 0.5}", "{}", "slices[0].parameters.tt"),
        ("{t: 0.5}", "{weigth: 2}", "slices[0].sources[1].parameters.weigth"),
    ]:
        text = textwrap.dedent(f"""\
            merge_method: slerp
            base_model: {a}
            slices:
              - sources:
                  - {{model: {a}, layer_range: [0, 2]}}
                  - {{model: {b}, layer_range: [0, 2], parameters: {source_params}}}
                parameters: {slice_params}
            """)
        merge_fails(capsys, tmp_path, text, where, "has no parameter")


def test_unknown_key_in_a_conditional_is_refused_with_the_nearest(capsys, tmp_path, llama_family):
    a, b = llama_family[:2]
    t = "[{filtr: self_attn, value: 0.3}, {value: 0.5}]"
    merge_fails(capsys, tmp_path, SLERP.format(a=a, b=b, t=t), "parameters.t[0].filtr", "did you mean 'filter'")


def test_duplicate_key_in_a_lineage_stage_is_refused(capsys, tmp_path, llama_family):
    a, b = llama_family[:2]
    stage = f"name: C\nmerge_method: linear\nmodels: [{{model: {a}, parameters: {{weight: 1}}}}]\n"
    final = SLERP.format(a=a, b="C", t=0.5).replace("  t: 0.5\n", "  t: 0.5\n  t: 0.6\n")
    merge_fails(capsys, tmp_path, stage + "---\n" + final, "key 't' appears twice")


def test_parameter_of_another_method_says_whose_it_is(capsys, tmp_path, llama_family):
    a, b = llama_family[:2]
    text = SLERP.format(a=a, b=b, t=0.5) + "  density: 0.5\n"
    merge_fails(capsys, tmp_path, text, "parameters.density", "belongs to", "'slerp' takes t")


@pytest.mark.parametrize(
    "t, fragment",
    [
        ("1.5", "outside [0, 1]"),
        ("-0.1", "outside [0, 1]"),
        ("[0, .nan, 1]", "parameters.t[1]"),
        ("[0, 0.5, .inf]", "not a finite number"),
        ("'0.5'", "is not a float"),
        ("[{filter: self_attn, value: [0, .nan]}, {value: 0.5}]", "parameters.t[0].value[1]"),
        ("[{filter: mlp, value: 2}, {value: 0.5}]", "outside [0, 1]"),
    ],
)
def test_out_of_domain_and_mistyped_values_are_refused_wherever_written(capsys, tmp_path, llama_family, t, fragment):
    a, b = llama_family[:2]
    merge_fails(capsys, tmp_path, SLERP.format(a=a, b=b, t=t), fragment, "parameter 't'")


@pytest.mark.parametrize("density", ["0", "1.5", "-0.2", ".nan"])
def test_density_outside_zero_one_is_refused(capsys, tmp_path, llama_family, density):
    a, b = llama_family[:2]
    text = TIES.format(a=a, b=b, extra="", top="").replace("density: 0.5", f"density: {density}")
    merge_fails(capsys, tmp_path, text, "parameter 'density'", "models[1].parameters.density")


def test_a_bool_written_as_a_number_is_refused(capsys, tmp_path, llama_family):
    a, b = llama_family[:2]
    text = TIES.format(a=a, b=b, extra="", top="").replace("normalize: true", "normalize: 1")
    merge_fails(capsys, tmp_path, text, "parameter 'normalize' = 1 is not true or false")


def test_weights_with_nan_or_inf_in_a_gradient_are_refused(capsys, tmp_path, llama_family):
    a, b = llama_family[:2]
    text = LINEAR_TWO.format(a=a, b=b).replace("weight: 1.0}", "weight: [1, -.inf]}", 1)
    merge_fails(capsys, tmp_path, text, "models[0].parameters.weight[1]", "not a finite number")


def test_a_filter_that_matches_nothing_warns_with_the_nearest_module(capsys, tmp_path, llama_family):
    """mergekit runs such recipes (a published recipe on another family), so it is a warning."""
    a, b = llama_family[:2]
    recipe = write_recipe(tmp_path, SLERP.format(a=a, b=b, t="[{filter: self_atn, value: [0, 1]}, {value: 0.5}]"))
    for command in (["merge", recipe, tmp_path / "out", "--quiet"], ["plan", recipe]):
        code, _, err = cli(capsys, *command)
        assert code == 0, err
        warned = [line for line in err.splitlines() if "matches no tensor" in line]
        assert len(warned) == 1 and warned[0].startswith("warning: "), err
        assert "parameters.t[0].filter = 'self_atn'" in warned[0] and "did you mean 'self_attn'" in warned[0]


def test_filters_that_match_merge_as_before(tmp_path, llama_family):
    a, b = llama_family[:2]
    recipe = write_recipe(tmp_path, SLERP.format(a=a, b=b, t="[{filter: self_attn, value: [0, 1]}, {value: 0.5}]"))
    merge(recipe, tmp_path / "out")
    assert (tmp_path / "out" / "model.safetensors").is_file()


# --- the recipe file itself ------------------------------------------------------------------------


def test_duplicate_yaml_key_names_the_key_and_both_lines(capsys, tmp_path, llama_family):
    a, b = llama_family[:2]
    text = SLERP.format(a=a, b=b, t=0.5) + "base_model: " + str(b) + "\n"
    merge_fails(capsys, tmp_path, text, "key 'base_model' appears twice", "first on line 2", "line 6")


def test_duplicate_key_inside_parameters_is_refused(capsys, tmp_path, llama_family):
    a, b = llama_family[:2]
    text = SLERP.format(a=a, b=b, t=0.5) + "  t: 0.7\n"
    merge_fails(capsys, tmp_path, text, "key 't' appears twice")


def test_recipe_that_is_not_utf8_is_one_line(capsys, tmp_path, llama_family):
    a, b = llama_family[:2]
    recipe = tmp_path / "recipe.yml"
    recipe.write_bytes(SLERP.format(a=a, b=b, t=0.5).encode() + b"# caf\xe9\n")
    out = tmp_path / "out"
    for command in (["merge", recipe, out, "--quiet"], ["plan", recipe]):
        assert_one_error_line(*cli(capsys, *command), str(recipe), "not UTF-8")
    assert_nothing_written(out)


# --- input tensors and tokenizer files -------------------------------------------------------------


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_or_inf_in_an_input_tensor_names_model_and_tensor(capsys, tmp_path, llama_family, value):
    ft = copy_model(llama_family[1], tmp_path / "ft")
    name = "model.layers.1.mlp.up_proj.weight"

    def poison(tensors):
        tensors[name][3, 4] = value

    rewrite_tensors(ft, poison)
    before = digest(ft)
    merge_fails(capsys, tmp_path, LINEAR_TWO.format(a=llama_family[0], b=ft), f"model '{ft}'", name, "NaN or infinite")
    assert digest(ft) == before


def test_overflow_into_float16_is_refused_not_written_as_inf(tmp_path, llama_family):
    a = copy_model(llama_family[0], tmp_path / "a")
    name = "model.layers.0.self_attn.q_proj.weight"
    rewrite_tensors(a, lambda tensors: tensors[name].__setitem__((0, 0), 1e6))
    text = LINEAR_TWO.format(a=a, b=llama_family[1]) + "out_dtype: float16\n"
    with pytest.raises(NonFiniteError, match=f"output tensor {name} .* from finite inputs"):
        merge(write_recipe(tmp_path, text), tmp_path / "out")
    assert_nothing_written(tmp_path / "out")


@pytest.mark.parametrize("damage", ["loop", "directory", "invalid_json", "not_utf8"])
def test_unreadable_tokenizer_file_is_an_error(capsys, tmp_path, llama_family, damage):
    a = copy_model(llama_family[0], tmp_path / "a")
    target = a / "tokenizer.json"
    target.unlink()
    if damage == "loop":
        target.symlink_to(a / "tokenizer.json")
    elif damage == "directory":
        target.mkdir()
    elif damage == "invalid_json":
        target.write_text('{"model": ')
    else:
        target.write_bytes(b'{"x": "\xff"}')
    merge_fails(capsys, tmp_path, LINEAR_TWO.format(a=a, b=llama_family[1]), str(target), "tokenizer")


# --- write errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("code, fix", [(errno.ENOSPC, "free space"), (errno.EIO, "check the disk")])
def test_write_error_is_one_line_naming_the_output_and_errno(capsys, tmp_path, llama_family, monkeypatch, code, fix):
    from mergesmith.io import blockfile

    calls = []

    def failing(fd, data, offset):
        calls.append(1)
        if len(calls) > 3:
            raise OSError(code, os.strerror(code))
        return os.pwrite(fd, data, offset)

    out = tmp_path / "out"
    recipe = write_recipe(tmp_path, LINEAR_TWO.format(a=llama_family[0], b=llama_family[1]))
    monkeypatch.setattr(blockfile.os, "pwrite", failing)
    line = assert_one_error_line(*cli(capsys, "merge", recipe, out, "--quiet"), f"cannot write {out}", fix)
    assert errno.errorcode[code] in line
    assert_nothing_written(out)


def test_file_size_limit_is_one_line_in_a_real_process(tmp_path, llama_family):
    """EFBIG from RLIMIT_FSIZE (Python ignores SIGXFSZ, so the write fails instead of killing it)."""
    recipe = write_recipe(tmp_path, LINEAR_TWO.format(a=llama_family[0], b=llama_family[1]))
    out = tmp_path / "out"
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))\n"
        "from mergesmith.cli.main import main\n"
        f"sys.exit(main(['merge', {str(recipe)!r}, {str(out)!r}, '--quiet', '--lora-cache', {str(tmp_path / 'c')!r}]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"error: cannot write {out}") and "EFBIG" in done.stderr
    assert len(done.stderr.splitlines()) == 1 and "Traceback" not in done.stderr
    assert_nothing_written(out)


# --- crashes, Ctrl-C, two runs on one output ----------------------------------------------------


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_staging_of_a_dead_process_is_removed_with_one_warning(capsys, tmp_path, llama_family):
    out = tmp_path / "out"
    stale = tmp_path / f".out.partial-{dead_pid()}"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half a tensor")
    recipe = write_recipe(tmp_path, LINEAR_TWO.format(a=llama_family[0], b=llama_family[1]))
    code, _, err = cli(capsys, "merge", recipe, out, "--quiet")
    assert code == 0, err
    assert not stale.exists() and leftovers(out) == []
    assert [line for line in err.splitlines() if "interrupted run" in line] == [
        f"warning: removed {stale}, left behind by an interrupted run (process {stale.name.split('-')[-1]} is gone)"
    ]
    assert len(output_tensors(out)) > 0


def test_staging_of_a_live_process_is_never_touched(capsys, tmp_path, llama_family):
    out = tmp_path / "out"
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as live:
        try:
            busy = tmp_path / f".out.partial-{live.pid}"
            busy.mkdir()
            recipe = write_recipe(tmp_path, LINEAR_TWO.format(a=llama_family[0], b=llama_family[1]))
            assert_one_error_line(*cli(capsys, "merge", recipe, out, "--quiet"), f"pid {live.pid}", "another process")
            assert busy.is_dir() and not out.exists()
        finally:
            live.kill()


def test_sigkill_mid_merge_leaves_only_hidden_staging_which_the_next_run_clears(tmp_path, llama_family):
    """A real SIGKILL: the merge is held inside its staging directory, killed, then run again."""
    recipe = write_recipe(tmp_path, LINEAR_TWO.format(a=llama_family[0], b=llama_family[1]))
    out = tmp_path / "out"
    gate = tmp_path / "gate"
    code = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from mergesmith.execute import runner
        real = runner._write_job
        def slow(*a, **k):
            Path({str(gate)!r}).touch()
            time.sleep(60)
        runner._write_job = slow
        from mergesmith.cli.main import main
        sys.exit(main(['merge', {str(recipe)!r}, {str(out)!r}, '--quiet']))
    """)
    with subprocess.Popen([sys.executable, "-c", code]) as proc:
        for _ in range(600):
            if gate.exists():
                break
            proc.poll()
            assert proc.returncode is None, "the merge ended before it was killed"
            import time

            time.sleep(0.1)
        proc.kill()
    assert not out.exists() and leftovers(out) == [f".out.partial-{proc.pid}"]
    done = subprocess.run(
        [sys.executable, "-m", "mergesmith.cli.main", "merge", recipe, out, "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "left behind by an interrupted run" in done.stderr
    assert leftovers(out) == [] and (out / "config.json").is_file()


def test_ctrl_c_is_one_line_exit_130_and_no_staging(capsys, tmp_path, llama_family, monkeypatch):
    real = runner._write_job
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "_write_job", interrupted)
    recipe = write_recipe(tmp_path, LINEAR_TWO.format(a=llama_family[0], b=llama_family[1]))
    out = tmp_path / "out"
    code, stdout, stderr = cli(capsys, "merge", recipe, out, "--quiet")
    assert code == 130 and stdout == "" and stderr == "error: interrupted; incomplete output removed\n"
    assert_nothing_written(out)


def test_two_merges_on_one_output_at_once_one_wins_the_other_fails_cleanly(tmp_path, llama_family):
    recipe = write_recipe(tmp_path, LINEAR_TWO.format(a=llama_family[0], b=llama_family[1]))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "mergesmith.cli.main", "merge", str(recipe), str(out), "--quiet"]
    procs = [subprocess.Popen(command, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    for p in procs:
        p.stderr.close()
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert len(loser.splitlines()) == 1 and loser.startswith("error: ") and str(out) in loser
    assert leftovers(out) == []
    written = json.loads((out / "config.json").read_text())
    assert written["num_hidden_layers"] > 0 and len(output_tensors(out)) > 0


def test_publish_refuses_an_output_that_appeared_meanwhile(tmp_path, llama_family, monkeypatch):
    """The final swap re-checks the target under the lock: a run without force never replaces an
    output another run published while it was merging."""
    recipe = write_recipe(tmp_path, LINEAR_TWO.format(a=llama_family[0], b=llama_family[1]))
    out = tmp_path / "out"
    real = runner._write_job

    def meanwhile(*args, **kwargs):
        out.mkdir(exist_ok=True)
        (out / "theirs.txt").write_text("another run's output")
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "_write_job", meanwhile)
    with pytest.raises(OutputExistsError, match="already exists"):
        merge(recipe, out, workers=1)
    assert sorted(p.name for p in out.iterdir()) == ["theirs.txt"] and leftovers(out) == []


def test_nan_check_costs_nothing_on_finite_tensors():
    """The check's fast path (a sum) and its exact fallback agree on tricky values."""
    from mergesmith.execute.finite import all_finite

    big = torch.full((4,), 3e38, dtype=torch.float32)  # the sum overflows, the values are finite
    assert all_finite(big)
    assert all_finite(torch.zeros(0))
    assert not all_finite(torch.tensor([1.0, float("nan")], dtype=torch.bfloat16))
    assert not all_finite(torch.tensor([float("-inf"), 1.0], dtype=torch.float16))
    assert all_finite(torch.arange(10))


def test_bad_recipe_with_an_adapter_writes_nothing_to_the_lora_cache(capsys, tmp_path, llama_family):
    """Adapters are folded into the cache only after every check has passed."""
    import warnings

    import peft
    from pico import build_model

    adapter = tmp_path / "adapter"
    model = peft.get_peft_model(build_model("llama", seed=0), peft.LoraConfig(r=4, target_modules=["q_proj"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save_pretrained(adapter)
    cache = tmp_path / "cache"
    good = f"merge_method: linear\nmodels:\n  - model: {llama_family[0]}+{adapter}\n    parameters: {{weight: 1.0}}\n"
    merge_fails(
        capsys,
        tmp_path,
        good.replace("weight: 1.0", "weight: 1.0, wieght: 2"),
        "did you mean 'weight'",
        extra=["--lora-cache", cache],
    )
    assert not cache.exists()
    code, _, err = cli(capsys, "merge", write_recipe(tmp_path, good), tmp_path / "ok", "--quiet", "--lora-cache", cache)
    assert code == 0, err
    assert len(list(cache.iterdir())) == 1


def test_failed_merge_removes_the_folders_it_created_for_the_output(tmp_path, llama_family, monkeypatch):
    from mergesmith.errors import MergesmithError

    def boom(*args, **kwargs):
        raise MergesmithError("boom")

    monkeypatch.setattr(runner, "_write_job", boom)
    recipe = write_recipe(tmp_path, LINEAR_TWO.format(a=llama_family[0], b=llama_family[1]))
    with pytest.raises(MergesmithError, match="boom"):
        merge(recipe, tmp_path / "new" / "deeper" / "out")
    assert not (tmp_path / "new").exists()
