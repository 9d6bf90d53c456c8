"""Bad MoE configs and inputs: one line naming the key or model and the fix, exit 2, nothing written."""

from __future__ import annotations

import pytest
from cli_helpers import assert_nothing_written, assert_one_error_line, cli, copy_model, digest, rewrite_tensors
from moe_configs import moe_config, write_config


def _fails(capsys, tmp_path, config: dict, *fragments: str) -> str:
    path = write_config(tmp_path, config)
    out = tmp_path / "out"
    line = assert_one_error_line(*cli(capsys, "moe", path, out, "--quiet"), *fragments)
    assert_nothing_written(out)
    return line


def test_expert_with_other_shapes_is_refused(llama_family, tmp_path, capsys):
    base, ft1, _ = llama_family
    odd = copy_model(ft1, tmp_path / "odd")
    rewrite_tensors(
        odd, lambda t: t.update({"model.layers.2.mlp.up_proj.weight": t["model.layers.2.mlp.up_proj.weight"][:100]})
    )
    before = digest(base, odd)
    _fails(
        capsys,
        tmp_path,
        moe_config(base, [ft1, odd]),
        "model.layers.2.mlp.up_proj.weight is (100, 64)",
        "the base",
        "(128, 64)",
        "fine-tunes of the base",
    )
    assert digest(base, odd) == before


def test_expert_of_another_family_is_refused(llama_family, qwen2_family, tmp_path, capsys):
    _fails(
        capsys,
        tmp_path,
        moe_config(llama_family[0], [llama_family[1], qwen2_family[1]]),
        "is 'qwen2' but the base is 'llama'",
    )


def test_base_of_a_family_without_moe_is_refused(phi2_family, tmp_path, capsys):
    _fails(capsys, tmp_path, moe_config(phi2_family[0], phi2_family[1:]), "is 'phi'", "llama or mistral")


@pytest.mark.parametrize("mode", ["hidden", "cheap_embed"])
def test_expert_without_prompts_is_refused(llama_family, tmp_path, capsys, mode):
    base, ft1, ft2 = llama_family
    config = moe_config(base, [ft1, ft2], gate_mode=mode)
    del config["experts"][1]["positive_prompts"]
    _fails(capsys, tmp_path, config, "experts[1]", "has no positive_prompts", f"'{mode}'")


def test_random_gates_need_no_prompts(llama_family, tmp_path, capsys):
    base, ft1, ft2 = llama_family
    config = moe_config(base, [ft1, ft2], gate_mode="random")
    del config["experts"][1]["positive_prompts"]
    code, _, err = cli(capsys, "moe", write_config(tmp_path, config), tmp_path / "out", "--quiet")
    assert code == 0, err


def test_more_experts_per_token_than_experts(llama_family, tmp_path, capsys):
    base, ft1, ft2 = llama_family
    _fails(
        capsys,
        tmp_path,
        moe_config(base, [ft1, ft2], experts_per_token=3),
        "experts_per_token is 3 but there are 2 experts",
        "from 1 to 2",
    )


def test_unknown_gate_mode_suggests_the_nearest(llama_family, tmp_path, capsys):
    base, ft1, ft2 = llama_family
    _fails(
        capsys,
        tmp_path,
        moe_config(base, [ft1, ft2], gate_mode="hiden"),
        "gate_mode 'hiden' is unknown",
        "did you mean 'hidden'?",
    )


@pytest.mark.parametrize(
    "where,key,hint",
    [("top", "expert_per_token", "experts_per_token"), ("expert", "positive_prompt", "positive_prompts")],
)
def test_unknown_key_suggests_the_nearest(llama_family, tmp_path, capsys, where, key, hint):
    base, ft1, ft2 = llama_family
    config = moe_config(base, [ft1, ft2])
    (config if where == "top" else config["experts"][0])[key] = 1
    _fails(capsys, tmp_path, config, "unknown key", key, f"did you mean '{hint}'?")


def test_identical_prompts_everywhere_are_refused(llama_family, tmp_path, capsys):
    base, ft1, ft2 = llama_family
    config = moe_config(base, [ft1, ft2])
    config["experts"][1]["positive_prompts"] = config["experts"][0]["positive_prompts"]
    _fails(capsys, tmp_path, config, "same prompts", "every router row would be equal")


@pytest.mark.parametrize("arch,fragment", [("qwen3", "is not built by mergesmith"), ("mixtrel", "is unknown")])
def test_unsupported_architecture(llama_family, tmp_path, capsys, arch, fragment):
    base, ft1, ft2 = llama_family
    _fails(capsys, tmp_path, moe_config(base, [ft1, ft2], architecture=arch), f"'{arch}' {fragment}", "mixtral or qwen")


def test_shared_experts_need_qwen(llama_family, tmp_path, capsys):
    base, ft1, ft2 = llama_family
    config = moe_config(base, [ft1, ft2], architecture="mixtral")
    config["shared_experts"] = [{"source_model": str(base), "positive_prompts": ["x"]}]
    _fails(capsys, tmp_path, config, "Mixtral has no shared experts")


def test_existing_output_is_kept_without_force(llama_family, tmp_path, capsys):
    base, ft1, ft2 = llama_family
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep").write_text("x")
    path = write_config(tmp_path, moe_config(base, [ft1, ft2]))
    assert_one_error_line(*cli(capsys, "moe", path, tmp_path / "out", "--quiet"), "already exists", "--force")
    assert (tmp_path / "out" / "keep").read_text() == "x"


def test_expert_with_another_layer_count_is_refused(llama_family, llama48, tmp_path, capsys):
    _fails(capsys, tmp_path, moe_config(llama_family[0], [llama_family[1], llama48]), "has 48 layers, the base 4")
