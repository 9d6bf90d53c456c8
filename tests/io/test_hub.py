"""Hub ids in recipes (mergesmith/io/hub.py), resolved offline from a fake Hugging Face cache.

The cache is laid out as huggingface_hub writes it (``models--org--name/blobs``, ``snapshots/<sha>``
of symlinks, ``refs/main``) in tmp_path; ``HF_HUB_OFFLINE=1`` makes any network attempt an error.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import pytest
import torch
from reference import load_dir
from safetensors.torch import save_file

from mergesmith.cli.main import main
from mergesmith.io.resolve import open_model

hub_constants = pytest.importorskip("huggingface_hub.constants")

COMMIT = "0123456789abcdef0123456789abcdef01234567"
ADAPTER_COMMIT = "89abcdef0123456789abcdef0123456789abcdef"
Q0 = "model.layers.0.self_attn.q_proj.weight"
RANK, ALPHA = 2, 4


def add_repo(cache: Path, repo_id: str, files: dict[str, bytes], commit: str) -> Path:
    """One model repo in huggingface_hub's cache layout; returns its snapshot directory."""
    storage = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = storage / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (storage / "blobs").mkdir()
    for name, data in files.items():
        blob = storage / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    (storage / "refs").mkdir()
    (storage / "refs" / "main").write_text(commit)
    return snapshot


def adapter_files(tmp_path: Path) -> tuple[dict[str, bytes], dict[str, torch.Tensor]]:
    """A hand-written PEFT LoRA adapter on layer 0's q_proj of the pico llama."""
    generator = torch.Generator().manual_seed(7)
    tensors = {
        f"base_model.model.{Q0[: -len('.weight')]}.lora_A.weight": torch.randn(RANK, 64, generator=generator),
        f"base_model.model.{Q0[: -len('.weight')]}.lora_B.weight": torch.randn(64, RANK, generator=generator),
    }
    save_file(tensors, tmp_path / "adapter.safetensors")
    config = {"peft_type": "LORA", "r": RANK, "lora_alpha": ALPHA, "target_modules": ["q_proj"]}
    files = {
        "adapter_config.json": json.dumps(config).encode(),
        "adapter_model.safetensors": (tmp_path / "adapter.safetensors").read_bytes(),
    }
    return files, tensors


@pytest.fixture
def hub(llama_family, tmp_path, monkeypatch) -> dict:
    cache = tmp_path / "hf-cache"
    base_files = {p.name: p.read_bytes() for p in llama_family[0].iterdir() if p.is_file()}
    files, tensors = adapter_files(tmp_path)
    snapshot = add_repo(cache, "org/pico", base_files, COMMIT)
    add_repo(cache, "org/pico-lora", files, ADAPTER_COMMIT)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads both variables once, when it is imported: set its copies as well.
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)  # 'org/pico' must not exist as a relative path
    return {"snapshot": snapshot, "factors": tensors}


def cli(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def linear(tmp_path: Path, first: str, second: str) -> Path:
    recipe = tmp_path / f"recipe-{len(list(tmp_path.glob('recipe-*')))}.yml"
    recipe.write_text(
        f"merge_method: linear\nmodels:\n  - model: {first}\n    parameters: {{weight: 0.5}}\n"
        f"  - model: {second}\n    parameters: {{weight: 0.5}}\n"
    )
    return recipe


@pytest.mark.parametrize("ref", ["org/pico", f"org/pico@{COMMIT}", "org/pico@main"])
def test_hub_ids_resolve_from_the_cache_offline(hub, ref):
    model = open_model(ref)
    try:
        assert model.path == hub["snapshot"].resolve()
        assert model.key == ref and Q0 in model.tensors
    finally:
        model.reader.close()


def test_merge_with_hub_ids_equals_merge_with_local_paths(hub, llama_family, tmp_path, capsys):
    base, ft1, _ = llama_family
    code, _, err = cli(capsys, "merge", linear(tmp_path, "org/pico", ft1), tmp_path / "hub-out", "--quiet")
    assert code == 0, err
    assert cli(capsys, "merge", linear(tmp_path, base, ft1), tmp_path / "local-out", "--quiet")[0] == 0
    hub_out, local_out = load_dir(tmp_path / "hub-out"), load_dir(tmp_path / "local-out")
    assert hub_out.keys() == local_out.keys()
    assert all(torch.equal(hub_out[n], local_out[n]) for n in local_out)
    assert "org/pico" in (tmp_path / "hub-out" / "README.md").read_text()


def test_adapter_from_the_hub_is_folded_in(hub, llama_family, tmp_path, capsys):
    """``org/pico@<sha>+org/pico-lora``: W + alpha/r · (B @ A) on the one adapted tensor."""
    recipe = tmp_path / "r.yml"
    recipe.write_text(
        f"merge_method: linear\nmodels:\n  - model: org/pico@{COMMIT}+org/pico-lora\n"
        "    parameters: {weight: 1.0}\ndtype: float32\n"
    )
    code, _, err = cli(capsys, "merge", recipe, tmp_path / "out", "--quiet", "--lora-cache", tmp_path / "c")
    assert code == 0, err
    out, base = load_dir(tmp_path / "out"), load_dir(llama_family[0])
    a, b = hub["factors"].values()
    torch.testing.assert_close(out[Q0], base[Q0] + (b @ a) * (ALPHA / RANK), rtol=1e-6, atol=1e-7)
    assert all(torch.equal(out[n], base[n]) for n in base if n != Q0)


@pytest.mark.parametrize(
    "ref, fragments",
    [
        (
            "org/missing",
            [
                "model 'org/missing' is not found locally",
                "HF_HUB_OFFLINE is set",
                "`hf download org/missing`",
                "HF_HUB_CACHE",
            ],
        ),
        ("org/pico@v2", ["model 'org/pico@v2' is not found locally", "`hf download org/pico --revision v2`"]),
        (
            "org/pico+org/no-lora",
            ["model 'org/pico+org/no-lora': 'org/no-lora' is not found locally", "`hf download org/no-lora`"],
        ),
    ],
)
def test_unavailable_hub_id_is_one_error_line(hub, tmp_path, capsys, ref, fragments):
    code, out, err = cli(capsys, "merge", linear(tmp_path, ref, "org/pico"), tmp_path / "out")
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in {err!r}"
    assert not (tmp_path / "out").exists()


def test_unavailable_hub_id_is_one_error_line_in_a_fresh_process(hub, tmp_path):
    # In-process tests import huggingface_hub.utils through other packages; a bare `mergesmith`
    # process must import the exceptions it catches itself.
    import subprocess

    recipe = linear(tmp_path, "org/missing", "org/missing")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hf-cache"), "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "mergesmith", "plan", str(recipe)], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert run.returncode == 2 and run.stdout == "", run.stderr
    assert len(run.stderr.splitlines()) == 1 and "model 'org/missing' is not found locally" in run.stderr, run.stderr


def test_missing_huggingface_hub_names_the_extra(hub, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails as if not installed
    code, _, err = cli(capsys, "plan", linear(tmp_path, "org/pico", "org/pico"))
    assert code == 2 and len(err.splitlines()) == 1
    assert "model 'org/pico'" in err and "pip install 'mergesmith[hub]'" in err


def test_revision_on_a_local_path_is_an_error(hub, llama_family, tmp_path, capsys):
    code, _, err = cli(capsys, "plan", linear(tmp_path, f"{llama_family[0]}@v1", llama_family[1]))
    assert code == 2 and "is a local path" in err and "'@v1'" in err
