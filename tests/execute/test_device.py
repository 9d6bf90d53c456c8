"""``--device``: the methods run where asked, with the same numbers; a missing GPU is one clear line."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import mergesmith
from mergesmith.cli.main import main
from mergesmith.errors import ConfigError
from mergesmith.execute import stream
from mergesmith.execute.runner import check_device

RECIPES = {
    "ties": {"merge_method": "ties", "parameters": {"density": 0.5, "weight": 0.5}},
    "dare_ties": {"merge_method": "dare_ties", "parameters": {"density": 0.5, "weight": 0.5}},
    "slerp": {"merge_method": "slerp", "parameters": {"t": 0.4}},
}


def _recipe(method, family):
    base, ft1, ft2 = family
    models = [{"model": str(ft1)}] + ([{"model": str(ft2)}] if method != "slerp" else [])
    return dict(RECIPES[method], models=models, base_model=str(base), dtype="float32")


def _devices() -> list[str]:
    # "cpu:0" takes the device code path (moves to and from the device) on any machine.
    return ["cpu:0"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", _devices())
@pytest.mark.parametrize("method", sorted(RECIPES))
@pytest.mark.parametrize("streamed", [False, True])
def test_device_gives_the_same_tensors(method, device, streamed, llama_family, tmp_path, monkeypatch):
    if streamed:
        monkeypatch.setattr(stream, "STREAM_MIN", 1)
    mergesmith.merge(_recipe(method, llama_family), tmp_path / "cpu", seed=3)
    mergesmith.merge(_recipe(method, llama_family), tmp_path / "dev", seed=3, device=device)
    a, b = load_file(tmp_path / "cpu" / "model.safetensors"), load_file(tmp_path / "dev" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_check_device():
    assert check_device("cpu") == "cpu"
    with pytest.raises(ConfigError, match="not a torch device"):
        check_device("gpu0")
    with pytest.raises(ConfigError, match="cpu or cuda"):
        check_device("meta")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_missing_gpu_is_one_line(llama_family, tmp_path, capsys):
    recipe = tmp_path / "r.yml"
    import yaml

    recipe.write_text(yaml.safe_dump(_recipe("ties", llama_family)))
    assert main(["merge", str(recipe), str(tmp_path / "out"), "--device", "cuda", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no CUDA GPU" in err[0] and "use device cpu" in err[0]
    assert not (tmp_path / "out").exists()
