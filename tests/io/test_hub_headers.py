"""Planning from headers (io/hub.py, io/resolve.py ``open_headers``) against a stand-in Hub on loopback.

The stand-in answers what huggingface_hub asks of the Hub: the model info and tree APIs, and
``/{repo}/resolve/{revision}/{file}`` with HEAD and ranged GET (``X-Repo-Commit``, ``ETag``,
``Content-Length``, ``Content-Range``); it counts the bytes it serves per file. ``HF_HUB_CACHE`` is
in tmp_path, so every test starts with an empty cache.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import torch
from cli_helpers import cli
from pico import perturb_, pico_config, save_model
from reference import load_dir
from safetensors.torch import save_file
from test_hub import linear

import mergesmith.api
from mergesmith.io.header import ModelHeader, ModelInput
from mergesmith.io.hub import HEADER_FILES
from mergesmith.output.tokenizer import TOKENIZER_FILES

hub_constants = pytest.importorskip("huggingface_hub.constants")

# Wide enough that a plan's reads (config, tokenizer, and huggingface_hub's 100 kB probe of each
# safetensors file's start) are far below 1% of the weights: about 27 MB per model in float32.
WIDE_HIDDEN, WIDE_INTERMEDIATE = 512, 1024
HEADER_PROBE = 100_001  # bytes=0-100000: what get_safetensors_metadata reads of each file
Q0 = "model.layers.0.self_attn.q_proj.weight"
RANK, ALPHA = 2, 4


class StandInHub:
    """Model repositories served from directories, and the bytes served, per (repo, file)."""

    def __init__(self):
        self.repos: dict[str, tuple[str, dict[str, bytes]]] = {}
        self.served: Counter = Counter()
        self.requests: list[tuple[str, str, str | None]] = []  # method, path, Range
        self.lock = threading.Lock()

    def add(self, repo_id: str, folder: Path) -> str:
        commit = hashlib.sha1(repo_id.encode()).hexdigest()
        files = {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}
        self.repos[repo_id] = (commit, files)
        return commit

    def weight_bytes(self, *repo_ids: str) -> int:
        return sum(len(data) for r in repo_ids for n, data in self.repos[r][1].items() if n.endswith(".safetensors"))

    def served_weights(self) -> dict[tuple[str, str], int]:
        return {k: v for k, v in self.served.items() if k[1].endswith(".safetensors")}

    def reset(self) -> None:
        with self.lock:
            self.served.clear()
            self.requests.clear()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet: pytest shows failures
        pass

    def do_HEAD(self) -> None:
        self._answer(send_body=False)

    def do_GET(self) -> None:
        self._answer(send_body=True)

    def _answer(self, send_body: bool) -> None:
        hub: StandInHub = self.server.hub
        with hub.lock:
            hub.requests.append((self.command, self.path, self.headers.get("Range")))
        parts = unquote(urlsplit(self.path).path).strip("/").split("/")
        if parts[:2] == ["api", "models"] and len(parts) == 6 and parts[4] in ("revision", "tree"):
            self._api("/".join(parts[2:4]), parts[4], parts[5], send_body)
        elif len(parts) >= 5 and parts[2] == "resolve":
            self._file("/".join(parts[:2]), parts[3], "/".join(parts[4:]), send_body)
        else:
            self._send(404, b"", {"X-Error-Code": "EntryNotFound"}, send_body)

    def _repo(self, repo_id: str, revision: str, send_body: bool):
        hub: StandInHub = self.server.hub
        if repo_id not in hub.repos:
            self._send(404, b"", {"X-Error-Code": "RepoNotFound"}, send_body)
            return None
        commit, files = hub.repos[repo_id]
        if revision not in ("main", commit):
            self._send(404, b"", {"X-Error-Code": "RevisionNotFound"}, send_body)
            return None
        return commit, files

    def _api(self, repo_id: str, kind: str, revision: str, send_body: bool) -> None:
        found = self._repo(repo_id, revision, send_body)
        if found is None:
            return
        commit, files = found
        if kind == "revision":
            data = {"id": repo_id, "sha": commit, "siblings": [{"rfilename": name} for name in files]}
        else:
            data = [
                {"type": "file", "path": name, "size": len(blob), "oid": hashlib.sha1(blob).hexdigest()}
                for name, blob in files.items()
            ]
        self._send(200, json.dumps(data).encode(), {"Content-Type": "application/json"}, send_body)

    def _file(self, repo_id: str, revision: str, name: str, send_body: bool) -> None:
        found = self._repo(repo_id, revision, send_body)
        if found is None:
            return
        commit, files = found
        if name not in files:
            self._send(404, b"", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit}, send_body)
            return
        blob = files[name]
        headers = {"X-Repo-Commit": commit, "ETag": f'"{hashlib.sha256(blob).hexdigest()}"', "Accept-Ranges": "bytes"}
        status, body = 200, blob
        wanted = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or "")
        if wanted:
            start = int(wanted[1])
            end = min(int(wanted[2]) if wanted[2] else len(blob) - 1, len(blob) - 1)
            status, body = 206, blob[start : end + 1]
            headers["Content-Range"] = f"bytes {start}-{end}/{len(blob)}"
        if send_body:
            with self.server.hub.lock:
                self.server.hub.served[(repo_id, name)] += len(body)
        self._send(status, body, headers, send_body)

    def _send(self, status: int, body: bytes, headers: dict, send_body: bool) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    stand_in = StandInHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.hub = stand_in
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{server.server_port}"
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    # huggingface_hub reads these once, when it is imported: set its copies as well.
    monkeypatch.setattr(hub_constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(
        hub_constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.chdir(tmp_path)  # 'org/wide' must not exist as a relative path
    stand_in.cache = cache
    yield stand_in
    server.shutdown()
    server.server_close()
    thread.join()


def _wide_model(path: Path, finetune: int, shards: int = 1) -> Path:
    from transformers import AutoModelForCausalLM

    config = pico_config("llama")
    config.hidden_size, config.intermediate_size = WIDE_HIDDEN, WIDE_INTERMEDIATE
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    if finetune:
        perturb_(model, torch.Generator().manual_seed(finetune))
    return save_model(model, path, shards=shards)


@pytest.fixture(scope="module")
def wide_family(tmp_path_factory) -> list[Path]:
    """A wide pico llama and a fine-tune of it (the fine-tune in 2 shards with an index)."""
    root = tmp_path_factory.mktemp("wide")
    return [_wide_model(root / "base", 0), _wide_model(root / "ft1", 1, shards=2)]


def _cached_weights(cache: Path) -> list[Path]:
    """Weight files in the Hub cache: snapshot links named after them, or downloads under way."""
    return sorted(cache.rglob("*.safetensors")) + sorted(cache.rglob("*.incomplete"))


def test_plan_over_hub_ids_reads_headers_not_weights(hub, wide_family, tmp_path, capsys):
    hub.add("org/wide", wide_family[0])
    hub.add("org/wide-ft", wide_family[1])
    code, out, err = cli(capsys, "plan", linear(tmp_path, "org/wide", "org/wide-ft"), "--tensors")
    assert code == 0, err
    served, weights = sum(hub.served.values()), hub.weight_bytes("org/wide", "org/wide-ft")
    print(f"\nplan over 2 hub ids: {served} bytes served of {weights} weight bytes ({100 * served / weights:.2f}%)")
    assert served < 0.01 * weights
    assert all(v <= HEADER_PROBE for v in hub.served_weights().values()), hub.served_weights()
    assert _cached_weights(hub.cache) == []
    # The same plan as over the local copies.
    local = mergesmith.api.plan(linear(tmp_path, *wide_family))
    remote = mergesmith.api.plan(linear(tmp_path, "org/wide", "org/wide-ft"))
    assert [(j.output, j.shape, j.dtype) for j in remote.jobs] == [(j.output, j.shape, j.dtype) for j in local.jobs]
    assert "model.layers.3.mlp.down_proj.weight" in out


@pytest.mark.parametrize("command", ["plan", "merge"])
def test_shape_mismatch_fails_before_any_weight_is_downloaded(
    hub, wide_family, llama_family, tmp_path, capsys, command
):
    hub.add("org/wide", wide_family[0])
    hub.add("org/narrow", llama_family[0])
    argv = [command, linear(tmp_path, "org/wide", "org/narrow")] + ([tmp_path / "out"] if command == "merge" else [])
    code, out, err = cli(capsys, *argv)
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert "different shapes" in err and "hidden_size: 512 vs 64" in err, err
    assert all(v <= HEADER_PROBE for v in hub.served_weights().values()), hub.served_weights()
    assert not any(
        method == "GET" and rng is None and path.endswith(".safetensors") for method, path, rng in hub.requests
    )
    assert _cached_weights(hub.cache) == []
    assert not (tmp_path / "out").exists()


def test_merge_over_hub_ids_downloads_weights_after_the_plan(hub, wide_family, tmp_path, capsys):
    hub.add("org/wide", wide_family[0])
    hub.add("org/wide-ft", wide_family[1])
    assert cli(capsys, "plan", linear(tmp_path, "org/wide", "org/wide-ft"))[0] == 0  # leaves a partial snapshot
    code, _, err = cli(capsys, "merge", linear(tmp_path, "org/wide", "org/wide-ft"), tmp_path / "hub-out", "--quiet")
    assert code == 0, err
    sizes = {
        (r, n): len(d)
        for r in ("org/wide", "org/wide-ft")
        for n, d in hub.repos[r][1].items()
        if n.endswith(".safetensors")
    }
    assert all(hub.served[k] >= size for k, size in sizes.items())  # every weight file downloaded
    assert cli(capsys, "merge", linear(tmp_path, *wide_family), tmp_path / "local-out", "--quiet")[0] == 0
    hub_out, local_out = load_dir(tmp_path / "hub-out"), load_dir(tmp_path / "local-out")
    assert hub_out.keys() == local_out.keys()
    assert all(torch.equal(hub_out[n], local_out[n]) for n in local_out)
    # Now that the cache holds the weights, planning asks the Hub nothing.
    hub.reset()
    assert cli(capsys, "plan", linear(tmp_path, "org/wide", "org/wide-ft"))[0] == 0
    assert hub.requests == []


def test_the_planner_gets_headers_only(llama_family, tmp_path, monkeypatch):
    seen = []
    real = mergesmith.api.build_plan

    def spy(recipe, models, **kw):
        the_plan = real(recipe, models, **kw)
        seen.extend(models.values())
        return the_plan

    monkeypatch.setattr(mergesmith.api, "build_plan", spy)
    mergesmith.api.plan(linear(tmp_path, llama_family[0], llama_family[1]))
    assert seen and all(type(m) is ModelHeader for m in seen)
    assert not any(isinstance(m, ModelInput) or hasattr(m, "reader") for m in seen)


def _adapter(folder: Path, targets: list[str]) -> tuple[Path, dict[str, torch.Tensor]]:
    """A PEFT LoRA adapter on layer 0's q_proj of the wide model ([64, 512])."""
    folder.mkdir()
    generator = torch.Generator().manual_seed(7)
    module = f"base_model.model.{Q0.removesuffix('.weight')}"
    factors = {
        f"{module}.lora_A.weight": torch.randn(RANK, WIDE_HIDDEN, generator=generator),
        f"{module}.lora_B.weight": torch.randn(64, RANK, generator=generator),
    }
    save_file(factors, folder / "adapter_model.safetensors")
    config = {"peft_type": "LORA", "r": RANK, "lora_alpha": ALPHA, "target_modules": targets}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder, factors


def test_hub_adapter_is_checked_from_its_config_then_folded_by_merge(hub, wide_family, tmp_path, capsys):
    hub.add("org/wide", wide_family[0])
    folder, factors = _adapter(tmp_path / "lora", ["q_proj"])
    hub.add("org/wide-lora", folder)
    hub.add("org/bad-lora", _adapter(tmp_path / "bad", ["no_such_proj"])[0])
    recipe = tmp_path / "r.yml"
    recipe.write_text(
        "merge_method: linear\nmodels:\n  - model: org/wide+org/wide-lora\n"
        "    parameters: {weight: 1.0}\ndtype: float32\n"
    )
    assert cli(capsys, "plan", recipe)[0] == 0
    assert hub.served[("org/wide-lora", "adapter_model.safetensors")] == 0
    assert hub.served[("org/wide-lora", "adapter_config.json")] > 0
    code, out, err = cli(capsys, "plan", linear(tmp_path, "org/wide+org/bad-lora", "org/wide"))
    assert code == 2 and len(err.splitlines()) == 1 and "target_modules" in err, err
    code, _, err = cli(capsys, "merge", recipe, tmp_path / "out", "--quiet", "--lora-cache", tmp_path / "c")
    assert code == 0, err
    out, base = load_dir(tmp_path / "out"), load_dir(wide_family[0])
    a, b = factors.values()
    torch.testing.assert_close(out[Q0], base[Q0] + (b @ a) * (ALPHA / RANK), rtol=1e-6, atol=1e-6)


def test_plan_offline_after_a_header_fetch_is_one_error_line(hub, wide_family, tmp_path, capsys, monkeypatch):
    """The config and tokenizer are cached by the first plan, the tensor headers are not."""
    hub.add("org/wide", wide_family[0])
    hub.add("org/wide-ft", wide_family[1])
    recipe = linear(tmp_path, "org/wide", "org/wide-ft")
    assert cli(capsys, "plan", recipe)[0] == 0
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    code, out, err = cli(capsys, "plan", recipe)
    assert code == 2 and out == "" and len(err.splitlines()) == 1, err
    assert "model 'org/wide'" in err and "HF_HUB_OFFLINE is set" in err and "`hf download org/wide`" in err


def test_header_files_include_every_tokenizer_file_a_merge_writes():
    assert set(TOKENIZER_FILES) | {"config.json", "generation_config.json"} <= set(HEADER_FILES)
