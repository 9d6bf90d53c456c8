"""Mixture-of-experts checkpoints as inputs: Mixtral, Qwen2-MoE and Qwen3-MoE merged expert by expert.

transformers saves one tensor per expert (tests/arch/moe_pico.py) and mergesmith writes the
same layout. mergekit 0.1.5 reads the experts fused ([experts, 2 x intermediate, hidden]) and
writes them fused: its elementwise methods (linear; TIES at density 1) give the same numbers,
checked bit-exact after splitting its tensors per expert; its slerp interpolates a layer's
fused experts as one vector, where mergesmith slerps each expert alone, checked against
mergekit's own slerp function applied to each expert.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from cli_helpers import copy_model, merge_fails, quiet_merge
from mergekit_batch import run_mergekit_many
from moe_pico import EXPERTS, MOE_KINDS, build_moe_model, make_moe_family
from reference import compare, load_dir
from safetensors import safe_open

from mergesmith.arch.infer import ArchInput, arch_for_models

T = 0.3
METHODS = ("slerp", "linear", "ties")
# Names of one expert's projections, by family: (gate, up, down).
_PROJ = {"mixtral": ("w1", "w3", "w2")}


def expert_name(kind: str, layer: int, expert: int, proj: int) -> str:
    if kind == "mixtral":
        return f"model.layers.{layer}.block_sparse_moe.experts.{expert}.{_PROJ[kind][proj]}.weight"
    return f"model.layers.{layer}.mlp.experts.{expert}.{('gate', 'up', 'down')[proj]}_proj.weight"


def split_fused(kind: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """mergekit's fused output in the per-expert names: gate_up[e] = cat(gate_e, up_e), down[e] = down_e."""
    out = {}
    for name, tensor in tensors.items():
        fused = re.fullmatch(r"model\.layers\.(\d+)\.mlp\.experts\.(gate_up_proj|down_proj)", name)
        if fused is None:
            router = kind == "mixtral" and re.fullmatch(r"model\.layers\.(\d+)\.mlp\.gate\.weight", name)
            out[name.replace(".mlp.gate.", ".block_sparse_moe.gate.") if router else name] = tensor
            continue
        layer = int(fused.group(1))
        for e in range(tensor.shape[0]):
            if fused.group(2) == "down_proj":
                out[expert_name(kind, layer, e, 2)] = tensor[e]
            else:
                gate, up = tensor[e].chunk(2, dim=0)
                out[expert_name(kind, layer, e, 0)], out[expert_name(kind, layer, e, 1)] = gate, up
    return out


def recipe(method: str, a: Path, b: Path, *, ours: bool) -> str:
    if method == "slerp":
        return f"models:\n  - model: {a}\n  - model: {b}\nmerge_method: slerp\nbase_model: {a}\nparameters:\n  t: {T}\n"
    if method == "linear":
        return (
            f"models:\n  - model: {a}\n    parameters: {{weight: 0.7}}\n  - model: {b}\n    parameters: {{weight: 0.3}}\n"
            "merge_method: linear\n"
        )
    tie = ", tie_break: mergekit" if ours else ""
    return (
        f"models:\n  - model: {a}\n  - model: {b}\n    parameters: {{weight: 0.8, density: 1.0{tie}}}\n"
        f"merge_method: ties\nbase_model: {a}\n"
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Per kind: the two inputs, then mergesmith's and mergekit's output per method."""
    root = tmp_path_factory.mktemp("moe")
    families = {kind: make_moe_family(kind, root / kind, seed=3) for kind in MOE_KINDS}
    jobs = [(recipe(m, *families[k], ours=False), root / f"mk-{k}-{m}") for k in MOE_KINDS for m in METHODS]
    failures = run_mergekit_many(jobs)
    assert failures == {}, failures
    ours = {
        (k, m): quiet_merge(recipe(m, *families[k], ours=True), root / f"ms-{k}-{m}")
        for k in MOE_KINDS
        for m in METHODS
    }
    return families, ours, root


def _names(path: Path) -> dict[str, tuple[int, ...]]:
    with safe_open(path / "model.safetensors", "pt") as f:
        return {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}


@pytest.mark.parametrize("kind", MOE_KINDS)
def test_data_file_lists_every_expert_tensor(kind, runs):
    base = runs[0][kind][0]
    config, shapes = json.loads((base / "config.json").read_text()), _names(base)
    spec = arch_for_models({"m": ArchInput(config, shapes, "m")})["m"]
    assert spec.family == kind and spec.num_experts == EXPERTS
    listed = {w.name for w in spec.pre + spec.post} | {w.name for i in range(2) for w in spec.layer_weights(i)}
    assert set(shapes) == listed
    assert {expert_name(kind, 1, e, p) for e in range(EXPERTS) for p in range(3)} <= listed


@pytest.mark.parametrize("kind", MOE_KINDS)
@pytest.mark.parametrize("method", ["linear", "ties"])
def test_elementwise_methods_match_mergekit_bit_exact(kind, method, runs, parity_log):
    _, ours, root = runs
    parity = compare(load_dir(ours[kind, method]), split_fused(kind, load_dir(root / f"mk-{kind}-{method}")))
    parity_log.append((f"moe {kind} {method}", parity))
    assert parity.missing == parity.extra == []
    assert parity.exact == len(_names(ours[kind, method])), parity.summary()


@pytest.mark.parametrize("kind", MOE_KINDS)
def test_slerp_each_expert_alone(kind, runs, parity_log):
    """Every expert tensor is mergekit's slerp of that expert alone; all else equals mergekit's merge."""
    from mergekit.merge_methods.slerp import slerp

    (a, b), ours, root = runs[0][kind], runs[1][kind, "slerp"], runs[2]
    mine, ins_a, ins_b = load_dir(ours), load_dir(a), load_dir(b)
    theirs = split_fused(kind, load_dir(root / f"mk-{kind}-slerp"))
    experts = {expert_name(kind, layer, e, p) for layer in range(2) for e in range(EXPERTS) for p in range(3)}
    t = torch.tensor([T])
    for name in experts:
        alone = slerp(t, ins_a[name][None], ins_b[name][None])[0]
        assert torch.equal(mine[name], alone), name
    parity = compare(*({n: v for n, v in side.items() if n not in experts} for side in (mine, theirs)))
    parity_log.append((f"moe {kind} slerp (all but the experts)", parity))
    assert parity.missing == parity.extra == [] and parity.exact == len(mine) - len(experts), parity.summary()
    # mergekit's fused slerp (one vector per layer) is a different merge: some expert differs.
    assert any(not torch.equal(mine[n], theirs[n]) for n in experts)


def test_ties_sparsifies_each_expert_alone(tmp_path, runs):
    """At density 0.4 the kept deltas are the top 40% of each expert, not of the fused layer."""
    from mergekit.merge_methods.api import merge_tensors

    a, b = runs[0]["qwen3_moe"]
    text = recipe("ties", a, b, ours=True).replace("density: 1.0", "density: 0.4")
    mine, ins_a, ins_b = load_dir(quiet_merge(text, tmp_path / "out")), load_dir(a), load_dir(b)
    params = {"weight": {1: 0.8}, "density": {1: 0.4}}
    for e in range(EXPERTS):
        name = expert_name("qwen3_moe", 1, e, 2)
        alone = merge_tensors([ins_a[name], ins_b[name]], "ties", parameters=params, ids=[0, 1], base_index=0)
        assert torch.equal(mine[name], alone), name


@pytest.mark.parametrize("kind", MOE_KINDS)
def test_outputs_load_in_transformers_with_the_merged_experts(kind, runs):
    from transformers import AutoModelForCausalLM

    out = runs[1][kind, "slerp"]
    tensors = load_dir(out)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    experts = model.model.layers[1].mlp.experts
    gate_up = torch.stack([torch.cat([tensors[expert_name(kind, 1, e, p)] for p in (0, 1)]) for e in range(EXPERTS)])
    down = torch.stack([tensors[expert_name(kind, 1, e, 2)] for e in range(EXPERTS)])
    assert torch.equal(experts.gate_up_proj.detach(), gate_up) and torch.equal(experts.down_proj.detach(), down)
    logits = model(torch.tensor([[1, 5, 9, 42]])).logits
    assert torch.isfinite(logits).all()


def _set_config(path: Path, **changes) -> None:
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    (path / "config.json").write_text(json.dumps(config))


def test_different_expert_counts_are_one_line(capsys, tmp_path, runs):
    from pico import save_model

    a = runs[0]["mixtral"][0]
    eight = save_model(build_moe_model("mixtral", seed=3, experts=8), tmp_path / "eight")
    line = merge_fails(capsys, tmp_path, recipe("slerp", a, eight, ours=True), "experts", ": 4", ": 8", "eight")
    assert "fine-tunes of one MoE model" in line


def test_dense_layers_among_expert_layers_are_refused(capsys, tmp_path, runs):
    a, b = (copy_model(p, tmp_path / p.name) for p in runs[0]["qwen2_moe"])
    _set_config(b, mlp_only_layers=[1])
    merge_fails(capsys, tmp_path, recipe("linear", a, b, ours=True), "mlp_only_layers = [1]", "dense", str(b))


def test_missing_expert_count_is_one_line(capsys, tmp_path, runs):
    a = copy_model(runs[0]["mixtral"][0], tmp_path / "a")
    config = json.loads((a / "config.json").read_text())
    del config["num_local_experts"]
    (a / "config.json").write_text(json.dumps(config))
    merge_fails(capsys, tmp_path, recipe("linear", a, runs[0]["mixtral"][1], ours=True), "num_local_experts", "add it")


def test_fused_experts_are_one_line(capsys, tmp_path, runs):
    """mergekit 0.1.5's output keeps transformers' fused in-memory layout; it is refused by name."""
    _, _, root = runs
    fused = root / "mk-mixtral-linear"
    line = merge_fails(capsys, tmp_path, recipe("linear", runs[0]["mixtral"][0], fused, ours=True), str(fused))
    assert "experts fused (model.layers.0.mlp.experts.down_proj" in line and "one tensor per expert" in line
