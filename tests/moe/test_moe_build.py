"""`mergesmith moe` on pico models: what is written, that transformers runs it, identities."""

from __future__ import annotations

import json

import pytest
import torch
from cli_helpers import cli, output_tensors
from moe_configs import PROMPTS, make_adapter, moe_config, write_config
from safetensors.torch import load_file

from mergesmith.moe.build import build_moe, plan_file


def _dense(model_dir):
    tensors = {}
    for shard in sorted(model_dir.glob("*.safetensors")):
        tensors.update(load_file(shard))
    return tensors


def test_mixtral_layout_config_and_copies(llama_family, tmp_path, capsys):
    base, ft1, ft2 = llama_family
    path = write_config(tmp_path, moe_config(base, [ft1, ft2, base]))
    code, out, err = cli(capsys, "moe", path, tmp_path / "out", "--quiet")
    assert code == 0, err
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["architectures"] == ["MixtralForCausalLM"] and config["model_type"] == "mixtral"
    assert (config["num_local_experts"], config["num_experts_per_tok"]) == (3, 2)
    got, sources = output_tensors(tmp_path / "out"), [_dense(m) for m in (ft1, ft2, base)]
    dense = sources[2]
    for layer in range(4):
        for e, src in enumerate(sources):
            for w, proj in (("w1", "gate_proj"), ("w2", "down_proj"), ("w3", "up_proj")):
                name = f"model.layers.{layer}.block_sparse_moe.experts.{e}.{w}.weight"
                assert torch.equal(got[name], src[f"model.layers.{layer}.mlp.{proj}.weight"]), name
        router = got[f"model.layers.{layer}.block_sparse_moe.gate.weight"]
        assert router.shape == (3, 64)
        assert torch.allclose(router.norm(dim=-1), torch.ones(3), atol=1e-6)  # unit rows
    for name, tensor in dense.items():
        if ".mlp." not in name:
            assert torch.equal(got[name], tensor), name
    # Tokenizer, card with the experts' prompts, the config as written.
    for file in ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "mergesmith_moe_config.yml"):
        assert (tmp_path / "out" / file).is_file(), file
    card = (tmp_path / "out" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\ntags:\n- mergesmith\n- merge\n- moe\n- mixtral\n---\n")
    assert f"| 0 | ft1 | {PROMPTS[0][0]}<br>{PROMPTS[0][1]} | — |" in card
    assert "```yaml\n" in card and "gate_mode: hidden" in card


@pytest.mark.parametrize("chunk", [520, 3 * 4096 + 8])
def test_copies_in_ranges_across_shards_are_the_inputs_bytes(llama_family, tmp_path, monkeypatch, chunk):
    """Copied tensors go range by range through buffers aligned to the output file, from several
    threads, into several shards: every byte as in the input, whatever the range boundaries."""
    from mergesmith.moe import build

    monkeypatch.setattr(build, "CHUNK", chunk)
    ranged, copy_bytes = [], build._copy_bytes
    monkeypatch.setattr(build, "_copy_bytes", lambda *a: ranged.append(a[2].name) or copy_bytes(*a))
    base, ft1, ft2 = llama_family
    build_moe(write_config(tmp_path, moe_config(base, [ft1, ft2])), tmp_path / "out", shard_size="40KB")
    assert len(ranged) == len(_dense(base)) + 4 * 3  # every tensor but the routers: two experts' MLPs
    assert len(list((tmp_path / "out").glob("*.safetensors"))) > 2
    got, sources = output_tensors(tmp_path / "out"), [_dense(m) for m in (ft1, ft2)]
    for layer in range(4):
        for e, src in enumerate(sources):
            for w, proj in (("w1", "gate_proj"), ("w2", "down_proj"), ("w3", "up_proj")):
                name = f"model.layers.{layer}.block_sparse_moe.experts.{e}.{w}.weight"
                assert torch.equal(got[name], src[f"model.layers.{layer}.mlp.{proj}.weight"]), name
    for name, tensor in _dense(base).items():
        if ".mlp." not in name:
            assert torch.equal(got[name], tensor), name


def test_experts_all_equal_to_the_base_reproduce_the_base(llama_family, tmp_path):
    """Whatever the router says, top-k weights sum to 1, so k copies of one MLP are that MLP."""
    from transformers import AutoModelForCausalLM

    base = llama_family[0]
    build_moe(write_config(tmp_path, moe_config(base, [base, base, base])), tmp_path / "out")
    moe = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    dense = AutoModelForCausalLM.from_pretrained(base).eval()
    ids = torch.tensor([[1, 40, 41, 42, 43, 44, 45, 46]])
    with torch.no_grad():
        assert torch.allclose(moe(ids).logits, dense(ids).logits, atol=1e-5)
        generated = moe.generate(ids, max_new_tokens=5, do_sample=False)
    assert generated.shape == (1, 13)
    assert torch.equal(generated, dense.generate(ids, max_new_tokens=5, do_sample=False))


def test_random_gates_are_seeded_per_tensor(llama_family, tmp_path):
    base, ft1, ft2 = llama_family
    path = write_config(tmp_path, moe_config(base, [ft1, ft2], gate_mode="random"))
    runs = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        build_moe(path, tmp_path / name, seed=seed)
        runs[name] = output_tensors(tmp_path / name)
    gate = "model.layers.0.block_sparse_moe.gate.weight"
    assert torch.equal(runs["a"][gate], runs["b"][gate])
    assert not torch.equal(runs["a"][gate], runs["c"][gate])
    assert not torch.equal(runs["a"][gate], runs["a"]["model.layers.1.block_sparse_moe.gate.weight"])
    assert 0.5 < runs["a"][gate].std() < 1.5  # N(0, 1)


def test_uniform_random_matches_linear_init_bounds(llama_family, tmp_path):
    base, ft1, ft2 = llama_family
    build_moe(write_config(tmp_path, moe_config(base, [ft1, ft2], gate_mode="uniform_random")), tmp_path / "out")
    gate = output_tensors(tmp_path / "out")["model.layers.2.block_sparse_moe.gate.weight"]
    assert gate.abs().max() <= 64**-0.5 and gate.abs().max() > 0.8 * 64**-0.5


def test_qwen2_moe_with_shared_expert_loads(llama_family, tmp_path):
    from transformers import AutoModelForCausalLM

    base, ft1, ft2 = llama_family
    config = moe_config(base, [ft1, ft2], architecture="qwen", experts_per_token=1)
    config["shared_experts"] = [{"source_model": str(base), "positive_prompts": PROMPTS[2], "residual_scale": 0.5}]
    build_moe(write_config(tmp_path, config), tmp_path / "out")
    got = output_tensors(tmp_path / "out")
    src = _dense(base)
    assert torch.equal(
        got["model.layers.1.mlp.shared_expert.down_proj.weight"], src["model.layers.1.mlp.down_proj.weight"] * 0.5
    )
    assert torch.equal(got["model.layers.1.mlp.shared_expert.up_proj.weight"], src["model.layers.1.mlp.up_proj.weight"])
    assert torch.equal(got["model.layers.0.self_attn.k_proj.bias"], torch.zeros(32))
    assert got["model.layers.0.mlp.shared_expert_gate.weight"].shape == (1, 64)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert type(model).__name__ == "Qwen2MoeForCausalLM"
    assert model.generate(torch.tensor([[1, 50, 51]]), max_new_tokens=3, do_sample=False).shape == (1, 6)


def test_plan_shows_experts_routers_and_sources(llama_family, tmp_path, capsys):
    base, ft1, ft2 = llama_family
    path = write_config(tmp_path, moe_config(base, [ft1, ft2], gate_mode="cheap_embed"))
    code, out, err = cli(capsys, "plan", path)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].endswith("a MixtralForCausalLM of 2 experts, 2 per token, 4 layers, float32")
    assert f"expert 0: {ft1}: 2 positive, 0 negative prompts" in lines
    assert "routers: 4 x (2, 64) (experts, hidden)" in lines
    assert f"copied: 27 tensors from {base}" in lines  # embed, head, final norm, 6 per layer
    assert f"copied: 12 tensors from {ft2} (expert 1)" in lines
    code, out, _ = cli(capsys, "plan", path, "--json")
    data = json.loads(out)
    assert data["config"]["num_local_experts"] == 2 and len(data["tensors"]) == len(plan_file(path).tensors)


def test_base_adapter_expert_is_the_folded_model(llama_family, tmp_path):
    """A `base+adapter` expert copies the MLP of base + B·A·scale (io/lora.py folds it)."""
    pytest.importorskip("peft")
    base = llama_family[0]
    adapter, folded = make_adapter(tmp_path)  # of the seed-0 pico llama, which llama_family's base is
    config = moe_config(base, [f"{base}+{adapter}", base])
    build_moe(write_config(tmp_path, config), tmp_path / "out", lora_cache=None)
    got = output_tensors(tmp_path / "out")
    name = "model.layers.0.mlp.up_proj.weight"
    assert torch.allclose(got["model.layers.0.block_sparse_moe.experts.0.w3.weight"], folded[name], atol=1e-6)
    assert not torch.equal(folded[name], _dense(base)[name])


def test_hidden_avg_is_the_mean_over_each_prompts_own_tokens(llama_family, tmp_path):
    """Rows from transformers' own full forward: states entering each layer, averaged over the
    prompt's tokens only (pads excluded), mean over prompts, normalised."""
    from transformers import AutoModelForCausalLM

    from mergesmith.moe.gates import load_tokenizer, tokenize

    base, ft1, ft2 = llama_family
    build_moe(write_config(tmp_path, moe_config(base, [ft1, ft2], gate_mode="hidden_avg")), tmp_path / "out")
    got = output_tensors(tmp_path / "out")
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    tokenizer = load_tokenizer(base)
    for expert in range(2):
        batch = tokenize(tokenizer, PROMPTS[expert])
        assert batch["attention_mask"].min() == 0  # prompts of different lengths: pads to leave out
        with torch.no_grad():
            states = model(**batch, output_hidden_states=True).hidden_states[:-1]
        mask = batch["attention_mask"][:, :, None].float()
        for layer, h in enumerate(states):
            row = ((h * mask).sum(1) / mask.sum(1)).mean(0)
            want = row / row.norm()
            assert torch.allclose(got[f"model.layers.{layer}.block_sparse_moe.gate.weight"][expert], want, atol=2e-6)


def test_noise_scale_is_seeded_and_scaled(llama_family, tmp_path):
    base, ft1, ft2 = llama_family
    config = moe_config(base, [ft1, ft2])
    config["experts"][1]["noise_scale"] = 0.01
    path = write_config(tmp_path, config)
    build_moe(path, tmp_path / "a", seed=3)
    build_moe(path, tmp_path / "b", seed=3)
    a, b, src = output_tensors(tmp_path / "a"), output_tensors(tmp_path / "b"), _dense(ft2)
    name = "model.layers.1.block_sparse_moe.experts.1.w3.weight"
    assert torch.equal(a[name], b[name])
    noise = a[name] - src["model.layers.1.mlp.up_proj.weight"]
    assert 0.008 < noise.std() < 0.012
    assert torch.equal(
        a["model.layers.1.block_sparse_moe.experts.0.w3.weight"], _dense(ft1)["model.layers.1.mlp.up_proj.weight"]
    )


@pytest.mark.parametrize("child", [False, True], ids=["thread", "child process"])
def test_nearly_parallel_router_rows_are_warned_about(llama_family, tmp_path, child):
    """mergekit-moe's check: a layer whose rows have a condition number above 5 cannot route;
    the warning reaches the caller from the router thread and from the child process alike."""
    base, ft1, ft2 = llama_family
    config = moe_config(base, [ft1, ft2], gate_mode="cheap_embed")  # rows: summed prompt embeddings
    config["experts"][1]["positive_prompts"] = config["experts"][0]["positive_prompts"] + ["fox"]
    with pytest.warns(UserWarning, match="nearly parallel"):
        build_moe(write_config(tmp_path, config), tmp_path / "out", router_child=child)
    rows = output_tensors(tmp_path / "out")["model.layers.3.block_sparse_moe.gate.weight"]
    assert torch.linalg.cond(rows) > 5


def test_tokenizer_options_as_in_merge_recipes(llama_family, tmp_path, capsys):
    base, ft1, ft2 = llama_family
    config = moe_config(base, [ft1, ft2], gate_mode="random", tokenizer_source=str(ft1), chat_template="chatml")
    build_moe(write_config(tmp_path, config), tmp_path / "out")
    assert "<|im_start|>" in (tmp_path / "out" / "chat_template.jinja").read_text()
    assert (tmp_path / "out" / "tokenizer.json").read_bytes() == (ft1 / "tokenizer.json").read_bytes()
    config["tokenizer_source"] = "union"
    path = write_config(tmp_path, config, "union.yml")
    line = cli(capsys, "moe", path, tmp_path / "union", "--quiet")[2]
    assert "tokenizer_source 'union' would change the vocabulary" in line and not (tmp_path / "union").exists()


def test_router_pass_leaves_a_core_to_the_copies(llama_family, tmp_path, monkeypatch):
    """The routers' thread runs torch on one core fewer than the process has (at least one);
    the caller's own thread count is untouched."""
    import os

    from mergesmith.moe import gates

    seen, real = [], gates.router_tensors  # looked up by the router thread when it starts

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(gates, "router_tensors", spy)
    before = torch.get_num_threads()
    base, ft1, ft2 = llama_family
    build_moe(write_config(tmp_path, moe_config(base, [ft1, ft2])), tmp_path / "out")
    assert seen == [max(1, min(before, len(os.sched_getaffinity(0)) - 1))]
    assert torch.get_num_threads() == before
