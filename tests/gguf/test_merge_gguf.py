"""A merged pico model: `merge --gguf ... --gguf-eval`, the card, greedy generation by llama.cpp vs
transformers, and `mergesmith eval` on GGUF files."""

from __future__ import annotations

import re

import pytest
from greedy import greedy_llama_cpp, greedy_transformers

from mergesmith.cli.main import main

N_NEW = 12


@pytest.fixture(scope="module")
def merged_with_gguf(k_llama_pair, converter_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("merge-gguf")
    a, b = k_llama_pair
    recipe = root / "recipe.yml"
    recipe.write_text(
        f"models:\n  - model: {a}\n    parameters: {{weight: 0.5}}\n  - model: {b}\n    parameters: {{weight: 0.5}}\n"
        "merge_method: linear\ndtype: float32\n"
    )
    out = root / "merged"
    code = main(["merge", str(recipe), str(out), "--gguf", "q8_0,q4_k_m", "--gguf-eval", "--quiet"])
    assert code == 0
    return out


def test_merge_gguf_writes_the_files_and_the_card_table(merged_with_gguf):
    gguf_dir = merged_with_gguf.with_name("merged-GGUF")
    names = sorted(p.name for p in gguf_dir.glob("*.gguf"))
    assert names == ["merged-F16.gguf", "merged-Q4_K_M.gguf", "merged-Q8_0.gguf"]
    for card in (merged_with_gguf / "README.md", gguf_dir / "README.md"):
        text = card.read_text()
        section = text[text.index("## GGUF\n") :]
        rows = [line for line in section.splitlines() if line.startswith("| merged-")]
        assert [r.split("|")[1].strip() for r in rows] == ["merged-F16.gguf", "merged-Q8_0.gguf", "merged-Q4_K_M.gguf"]
        cells = {r.split("|")[2].strip(): [c.strip() for c in r.split("|")[3:-1]] for r in rows}
        assert cells["f16"][3] == "ref" and cells["f16"][4] == "-"  # size, bpw, ppl, Δppl, KL, top-1
        kl_q8, kl_q4 = float(cells["q8_0"][4]), float(cells["q4_k_m"][4])
        assert 0 < kl_q8 < kl_q4
        assert re.search(r"against merged-F16\.gguf on austen_heldout \(\d+ tokens\), kjv_heldout", section)
    assert "## Merge Details" in (merged_with_gguf / "README.md").read_text()  # the merge card is kept


@pytest.fixture(scope="module")
def merged_export(merged_k_llama, converter_dir, tmp_path_factory):
    from mergesmith.gguf.export import export_gguf

    return export_gguf(merged_k_llama, tmp_path_factory.mktemp("merged-export"), "f16,q4_k_m", converter=converter_dir)


def test_llama_cpp_generates_what_transformers_generates(merged_export, merged_k_llama):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(merged_k_llama)
    ids = tok("The quick brown fox", add_special_tokens=True)["input_ids"]
    want = greedy_transformers(merged_k_llama, ids, N_NEW)
    assert greedy_llama_cpp(merged_export.file("f16").path, ids, N_NEW) == want
    assert len(set(want)) > 1


def test_kl_can_be_measured_against_the_hf_model(merged_export, tmp_path):
    from pico import CORPUS

    from mergesmith.gguf.report import evaluate_export

    text = tmp_path / "text.txt"
    text.write_text("\n".join(CORPUS * 4))
    report = evaluate_export(merged_export, ref="hf", texts=[text], context=64, limit=3)
    quality = {r.quant: r.quality for r in report.rows}
    assert 0 < quality["f16"].kl_mean < quality["q4_k_m"].kl_mean  # F16 rounding costs less than 4 bits
    assert quality["f16"].top1 > quality["q4_k_m"].top1
    assert report.ref.endswith("(Hugging Face, float32)") and "text (" in report.data


def test_eval_cli_scores_gguf_files(merged_with_gguf, capsys):
    gguf_dir = merged_with_gguf.with_name("merged-GGUF")
    text = gguf_dir.parent / "text.txt"
    from pico import CORPUS

    text.write_text("\n".join(CORPUS * 4))
    code = main(
        [
            "eval",
            str(gguf_dir / "merged-Q4_K_M.gguf"),
            "--ref",
            str(gguf_dir / "merged-F16.gguf"),
            "--text",
            str(text),
            "--context",
            "64",
            "--quiet",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    lines = out.splitlines()
    ranking = [line.split() for line in lines[1:3]]
    assert {r[-3] for r in ranking} == {"Q4_K_M", "F16"}  # each file's own type, not --dtype's float32
    block = lines.index("text text: perplexity, bits per byte, KL(ref ‖ model) per token")
    rows = [line.split() for line in lines[block + 2 : block + 4]]
    assert {r[1] for r in rows} == {"merged-Q4_K_M.gguf", "merged-F16.gguf"}
    kl = next(float(r[4]) for r in rows if r[1] == "merged-Q4_K_M.gguf")
    assert kl > 0


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--gguf-eval"], "--gguf TYPES"),
        (["--gguf", "q9_9"], "unknown quant type 'q9_9'"),
    ],
)
def test_bad_gguf_options_fail_before_the_merge(flags, words, k_llama_pair, tmp_path, capsys):
    recipe = tmp_path / "recipe.yml"
    recipe.write_text(f"models:\n  - model: {k_llama_pair[0]}\nmerge_method: passthrough\ndtype: float32\n")
    assert main(["merge", str(recipe), str(tmp_path / "out"), "--quiet", *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0]
    assert not (tmp_path / "out").exists()
