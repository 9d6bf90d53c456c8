"""The real SmolLM2-135M-Instruct, merged by mergesmith, exported and quantized once for the module.

Its hidden size (576) is not a multiple of 256, so llama.cpp stores some tensors of the K-quant
files in legacy types; the quality order of the types must hold all the same.
"""

from __future__ import annotations

import pytest
from greedy import greedy_llama_cpp, greedy_transformers

from mergesmith.eval.data import DATA_DIR
from mergesmith.gguf.export import export_gguf
from mergesmith.gguf.report import card_section, evaluate_export, write_card_section

pytestmark = pytest.mark.smollm2

ORDER = ("q8_0", "q6_k", "q4_k_m", "q3_k_m")  # more bits → less KL
TEXT = DATA_DIR / "text" / "austen_heldout.txt"


@pytest.fixture(scope="module")
def smol_report(smollm2_merged, converter_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("smol-gguf")
    result = export_gguf(smollm2_merged, out, "f16," + ",".join(ORDER), converter=converter_dir)
    return result, evaluate_export(result, texts=[TEXT], context=256, limit=2)


def test_kl_and_size_shrink_together(smol_report):
    _, report = smol_report
    rows = {r.quant: r for r in report.rows}
    assert rows["f16"].quality.kl_mean is None and rows["f16"].quality.delta_ppl is None
    kl = [rows[q].quality.kl_mean for q in ORDER]
    bpw = [rows[q].bits_per_weight for q in ORDER]
    assert 0 < kl[0] < kl[1] < kl[2] < kl[3], kl
    assert bpw == sorted(bpw, reverse=True), bpw
    assert rows["q8_0"].quality.top1 > 0.9 and kl[0] < 0.02  # Q8_0 is near lossless
    assert all(0.5 < rows[q].quality.ppl / rows["f16"].quality.ppl < 2 for q in ORDER)


def test_the_card_lists_every_file_with_its_numbers(smol_report, tmp_path):
    result, report = smol_report
    card = tmp_path / "README.md"
    card.write_text("# smol\n\n## Evaluation results\n\nkept\n")
    write_card_section(card, card_section(report), "smol")
    write_card_section(card, card_section(report), "smol")  # written twice: replaced, not repeated
    text = card.read_text()
    assert text.count("## GGUF") == 1 and "## Evaluation results\n\nkept\n" in text
    for f in result.files:
        line = next(line for line in text.splitlines() if line.startswith(f"| {f.path.name} |"))
        assert f"| {f.bits_per_weight:.2f} |" in line


def test_llama_cpp_f16_generates_what_transformers_generates(smol_report, smollm2_merged):
    from transformers import AutoTokenizer

    result, _ = smol_report
    tok = AutoTokenizer.from_pretrained(smollm2_merged)
    ids = tok("The three primary colors are", add_special_tokens=True)["input_ids"]
    want = greedy_transformers(smollm2_merged, ids, 16)
    assert greedy_llama_cpp(result.file("f16").path, ids, 16) == want


def test_gguf_tokens_match_the_hf_tokenizer(smol_report, smollm2_merged):
    from transformers import AutoTokenizer

    from mergesmith.eval.gguf_model import load_gguf

    result, _ = smol_report
    text = TEXT.read_text(encoding="utf-8")[:4000]
    hf = AutoTokenizer.from_pretrained(smollm2_merged)(text, add_special_tokens=False)["input_ids"]
    assert load_gguf(str(result.file("q4_k_m").path)).tokenizer(text)["input_ids"] == hf
