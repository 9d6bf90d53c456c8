"""Multi-stage lineages (mergekit-multi's format): A+B → C, C+B → D, D+E → F on pico llamas.

The final output must equal the three single-stage recipes run by hand, load in transformers,
resume (a second run merges nothing; an edit re-runs the edited stage and what follows), and bad
lineages must fail in one line before anything is written.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from pico import make_family
from reference import compare, load_dir

from mergesmith.api import merge
from mergesmith.cli.main import main
from mergesmith.errors import ConfigError
from mergesmith.lineage import (
    MERGED,
    STAGE_RECORD,
    UP_TO_DATE,
    is_lineage,
    merge_lineage,
    parse_lineage,
    plan_lineage,
    read_lineage,
)
from mergesmith.output.card import recipe_from_card
from mergesmith.plan.render import plan_to_dict

# Stage recipes with {a}, {b}, ... for models; {t} is stage D's slerp position (edited below).
STAGE_C = """merge_method: linear
models:
  - model: {a}
    parameters: {{weight: 0.6}}
  - model: {b}
    parameters: {{weight: 0.4}}
"""
STAGE_D = """merge_method: slerp
base_model: {c}
models:
  - model: {c}
  - model: {b}
parameters: {{t: {t}}}
"""
STAGE_F = """merge_method: task_arithmetic
base_model: {base}
models:
  - model: {d}
    parameters: {{weight: 0.7}}
  - model: {e}
    parameters: {{weight: 0.5}}
"""


def lineage_text(models: dict, t: float = 0.3) -> str:
    """C and D named, the final merge unnamed (mergekit-multi writes that one to --out-path)."""
    return (
        f"name: C\n{STAGE_C.format(**models)}---\nname: D\n{STAGE_D.format(**models, c='C', t=t)}---\n"
        f"{STAGE_F.format(**models, d='D')}"
    )


@pytest.fixture(scope="module")
def family(tmp_path_factory) -> dict[str, Path]:
    base, a, b, e = make_family("llama", tmp_path_factory.mktemp("lineage_family"), n_finetunes=3, seed=11)
    return {"base": base, "a": a, "b": b, "e": e}


def cli(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(x) for x in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def statuses(stdout: str) -> list[str]:
    return [line.split(": ", 1)[1].split(" (")[0] for line in stdout.splitlines() if line.startswith("stage ")]


def stamps(*dirs: Path) -> dict:
    """Inode and mtime of each directory and of every file in it: a rebuild changes them."""
    found = {}
    for d in dirs:
        found[str(d)] = os.stat(d).st_ino
        found.update({str(f): f.stat().st_mtime_ns for f in d.iterdir()})
    return found


@pytest.fixture(scope="module")
def built(family, tmp_path_factory):
    """The lineage, written beside the models with relative paths, run once through the CLI."""
    root = family["base"].parent
    text = lineage_text({k: p.name for k, p in family.items()})
    lineage = root / "lineage.yml"
    lineage.write_text(text)
    out = tmp_path_factory.mktemp("lineage_out") / "F"
    code = main(["merge", str(lineage), str(out), "--quiet"])
    assert code == 0
    return {"lineage": lineage, "text": text, "out": out, "stages": out.with_name("F.stages")}


@pytest.fixture(scope="module")
def by_hand(family, tmp_path_factory) -> dict[str, Path]:
    """The same three merges as single-stage recipes, each output fed to the next by path."""
    root = tmp_path_factory.mktemp("by_hand")
    models = {k: str(p) for k, p in family.items()}
    merge(STAGE_C.format(**models), root / "C")
    merge(STAGE_D.format(**models, c=root / "C", t=0.3), root / "D")
    merge(STAGE_F.format(**models, d=root / "D"), root / "F")
    return {"C": root / "C", "D": root / "D", "F": root / "F"}


def assert_bit_exact(ours: Path, ref: Path) -> None:
    a, b = load_dir(ours), load_dir(ref)
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), name


# --- the three-stage lineage end to end ------------------------------------------------------


def test_stages_and_final_output_equal_the_recipes_run_by_hand(built, by_hand):
    assert_bit_exact(built["stages"] / "C", by_hand["C"])
    assert_bit_exact(built["stages"] / "D", by_hand["D"])
    assert_bit_exact(built["out"], by_hand["F"])
    # The stages really differ from each other and from their inputs: the test can fail.
    assert not torch.equal(load_dir(by_hand["C"])["lm_head.weight"], load_dir(by_hand["D"])["lm_head.weight"])


def test_final_output_loads_in_transformers(built):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, info = AutoModelForCausalLM.from_pretrained(built["out"], output_loading_info=True)
    assert not info["missing_keys"]
    files = load_dir(built["out"])
    state = model.state_dict()
    assert all(torch.equal(state[name], tensor) for name, tensor in files.items())
    tok = AutoTokenizer.from_pretrained(built["out"])
    ids = tok("The quick brown fox", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], model.config.vocab_size) and torch.isfinite(logits).all()


def test_final_card_and_config_carry_the_whole_lineage(built, family):
    out = built["out"]
    card = (out / "README.md").read_text()
    assert recipe_from_card(card) == built["text"].rstrip()
    assert (out / "mergesmith_config.yml").read_text() == built["text"]
    lineage = card[card.index("### Lineage") : card.index("### Configuration")]
    assert f"1. C: [Linear](https://arxiv.org/abs/2203.05482) of {family['a'].name}, {family['b'].name}" in lineage
    assert f"2. D: [SLERP](https://en.wikipedia.org/wiki/Slerp) of C, {family['b'].name}" in lineage
    assert (
        f"3. final merge: [Task Arithmetic](https://arxiv.org/abs/2212.04089) of {family['base'].name}, D, "
        f"{family['e'].name}"
    ) in lineage
    front = yaml.safe_load(card.split("---\n")[1])
    assert "base_model" not in front  # local inputs only: named in the text, not listed as Hub ids
    for stage_dir, label in ((built["stages"] / "C", "C"), (built["stages"] / "D", "D"), (out, "final merge")):
        assert yaml.safe_load((stage_dir / STAGE_RECORD).read_text())["stage"] == label


def test_second_run_merges_nothing(capsys, built):
    before = stamps(built["out"], built["stages"] / "C", built["stages"] / "D")
    code, stdout, _ = cli(capsys, "merge", built["lineage"], built["out"])
    assert code == 0
    assert statuses(stdout) == [UP_TO_DATE] * 3
    assert stamps(built["out"], built["stages"] / "C", built["stages"] / "D") == before


def test_plan_shows_every_stage_before_any_is_built(capsys, built, family, by_hand):
    code, stdout, _ = cli(capsys, "plan", built["lineage"])
    assert code == 0
    head = stdout.splitlines()[:4]
    assert head[1].startswith("# 1. C: linear") and head[2].startswith("# 2. D: slerp")
    assert head[3].startswith("# 3. final merge: task_arithmetic")
    # D is planned from C's plan alone; it must match the plan made from C's files.
    planned = dict((s.label, p) for s, p in plan_lineage(read_lineage(built["lineage"])))
    from mergesmith.api import plan

    real = plan(STAGE_D.format(**{k: str(p) for k, p in family.items()}, c=by_hand["C"], t=0.3))

    def jobs(p):
        # Everything but the input models' keys: "C" here, C's directory there.
        return [
            {k: v for k, v in job.items() if k != "inputs"}
            | {"inputs": [{k: v for k, v in i.items() if k != "model"} for i in job["inputs"]]}
            for job in plan_to_dict(p)["tensors"]
        ]

    assert jobs(planned["D"]) == jobs(real) and planned["D"].num_layers == real.num_layers


# --- resuming --------------------------------------------------------------------------------


def test_editing_stage_2_reruns_stages_2_and_3_only(tmp_path, family, by_hand):
    models = {k: str(p) for k, p in family.items()}
    lineage, out = tmp_path / "lineage.yml", tmp_path / "F"
    lineage.write_text(lineage_text(models, t=0.3))
    first = merge_lineage(read_lineage(lineage), out)
    assert [o.status for o in first] == [MERGED] * 3 and [o.stage for o in first] == ["C", "D", "final merge"]
    stages = tmp_path / "F.stages"
    c_before, d_before = stamps(stages / "C"), stamps(stages / "D")

    lineage.write_text(lineage_text(models, t=0.6))
    second = merge_lineage(read_lineage(lineage), out)
    assert [o.status for o in second] == [UP_TO_DATE, MERGED, MERGED]
    assert stamps(stages / "C") == c_before and stamps(stages / "D") != d_before
    assert [o.fingerprint for o in second][0] == first[0].fingerprint
    assert not torch.equal(load_dir(out)["lm_head.weight"], load_dir(by_hand["F"])["lm_head.weight"])

    # An input rewritten on disk (new mtime) re-runs the stages that read it: only the final one.
    e_file = family["e"] / "model.safetensors"
    stat = e_file.stat()
    try:
        os.utime(e_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
        third = merge_lineage(read_lineage(lineage), out)
    finally:
        os.utime(e_file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert [o.status for o in third] == [UP_TO_DATE, UP_TO_DATE, MERGED]


def test_foreign_directory_in_the_way_needs_force(capsys, tmp_path, family, by_hand):
    lineage = tmp_path / "lineage.yml"
    lineage.write_text(lineage_text({k: str(p) for k, p in family.items()}))
    out, stages = tmp_path / "F", tmp_path / "work"
    stages.mkdir()
    (stages / "C").mkdir()  # somebody's directory, no stage record
    code, stdout, stderr = cli(capsys, "merge", lineage, out, "--intermediate-dir", stages, "--quiet")
    assert code == 2 and stdout == "" and len(stderr.splitlines()) == 1
    assert f"{stages / 'C'} exists and is not a build of stage 'C'" in stderr and "--force" in stderr
    assert not out.exists() and sorted(p.name for p in stages.iterdir()) == ["C"]

    code, stdout, _ = cli(capsys, "merge", lineage, out, "--intermediate-dir", stages, "--force")
    assert code == 0 and statuses(stdout) == [MERGED] * 3
    assert_bit_exact(out, by_hand["F"])


# --- errors: one line, exit 2, nothing written -----------------------------------------------


def bad_lineages(m: dict) -> dict[str, tuple[str, list[str]]]:
    """Case → (lineage text, fragments the error line must hold)."""
    c, d, f = STAGE_C.format(**m), STAGE_D.format(**m, c="C", t=0.3), STAGE_F.format(**m, d="D")
    c_uses_d = STAGE_D.format(**m, c="D", t=0.5)
    f_missing = STAGE_F.format(**(m | {"e": "no_such_model"}), d="D")
    return {
        "cycle": (
            f"name: C\n{c_uses_d}---\nname: D\n{d}---\n{f}",
            ["stages use each other in a cycle", "'C' → 'D' → 'C'"],
        ),
        "duplicate name": (f"name: C\n{c}---\nname: C\n{d}---\n{f}", ["documents 1 and 2 are both named 'C'"]),
        "bad key in one stage": (
            f"name: C\n{c}---\nname: D\n{d}base_modle: x\n---\n{f}",
            ["stage 'D'", "unknown key 'base_modle'", "did you mean 'base_model'?"],
        ),
        "unnamed stages": (f"{c}---\n{d}---\n{f}", ["documents 1, 2, 3 have no 'name'", "only the final merge"]),
        "missing model in the last stage": (
            f"name: C\n{c}---\nname: D\n{d}---\n{f_missing}",
            ["model 'no_such_model' not found"],
        ),
    }


@pytest.mark.parametrize(
    "case", ["cycle", "duplicate name", "bad key in one stage", "unnamed stages", "missing model in the last stage"]
)
def test_bad_lineage_fails_in_one_line_before_writing(capsys, tmp_path, family, case):
    text, fragments = bad_lineages({k: str(p) for k, p in family.items()})[case]
    lineage = tmp_path / "lineage.yml"
    lineage.write_text(text)
    code, stdout, stderr = cli(capsys, "merge", lineage, tmp_path / "F", "--quiet")
    assert code == 2 and stdout == "", stderr
    assert len(stderr.splitlines()) == 1 and stderr.startswith("error: "), stderr
    for fragment in fragments:
        assert fragment in stderr, (fragment, stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lineage.yml"]  # no OUT, no F.stages, no staging


def test_ambiguous_final_and_bad_names_are_config_errors(family):
    models = {k: str(p) for k, p in family.items()}
    two_ends = f"name: C\n{STAGE_C.format(**models)}---\nname: X\n{STAGE_C.format(**models)}"
    with pytest.raises(ConfigError, match="stages 'C', 'X' are used by no other stage"):
        parse_lineage(two_ends)
    with pytest.raises(ConfigError, match="stage name '../C' cannot be used"):
        parse_lineage(f"name: ../C\n{STAGE_C.format(**models)}---\n{STAGE_C.format(**models)}")
    # All named: the one stage nobody uses is the final merge, whatever its place in the file.
    lineage = parse_lineage(f"name: F\n{STAGE_F.format(**models, d='D')}---\nname: D\n{STAGE_C.format(**models)}")
    assert [s.label for s in lineage.stages] == ["D", "F"]


def test_single_documents_stay_plain_recipes(capsys, tmp_path, family):
    recipe = STAGE_C.format(**{k: str(p) for k, p in family.items()})
    assert not is_lineage(recipe) and not is_lineage("---\n" + recipe + "---\n")
    assert is_lineage("name: C\n" + recipe) and is_lineage(recipe + "---\n" + recipe)
    path = tmp_path / "recipe.yml"
    path.write_text(recipe)
    code, stdout, _ = cli(capsys, "merge", path, tmp_path / "out", "--quiet", "--intermediate-dir", tmp_path / "s")
    assert code == 2 and not (tmp_path / "out").exists()
    code, stdout, _ = cli(capsys, "merge", path, tmp_path / "out")
    assert code == 0 and stdout.startswith("wrote 39 tensors") and not (tmp_path / "out" / STAGE_RECORD).exists()


# --- against mergekit-multi ------------------------------------------------------------------


@pytest.mark.mergekit
def test_final_tensors_match_mergekit_multi(tmp_path, family, built, parity_log):
    script = Path(sys.executable).parent / "mergekit-multi"
    if not script.is_file():
        pytest.skip(f"{script} is missing")
    lineage = tmp_path / "lineage.yml"
    # Absolute paths: mergekit's card writer asks the Hub about anything that looks like org/name.
    lineage.write_text(lineage_text({k: str(p) for k, p in family.items()}))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [
        str(script),
        str(lineage),
        "--out-path",
        str(tmp_path / "F"),
        "--intermediate-dir",
        str(tmp_path / "stages"),
        "--no-cuda",
        "--quiet",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    if done.returncode != 0:
        pytest.skip(f"mergekit-multi could not run offline: {done.stderr.strip().splitlines()[-1:]}")
    parity = compare(load_dir(built["out"]), load_dir(tmp_path / "F"))
    parity_log.append(("lineage linear → slerp → task_arithmetic (final)", parity))
    assert parity.matches, parity.summary()
