#!/usr/bin/env bash
# The demo: set up .venv with only what it needs (scripts/setup.sh demo: no llama.cpp build, no
# test extras), then frankenmerge SmolLM2-135M with itself and compare generations
# (examples/smollm2_frankenmerge.py; output in out/smollm2-frankenmerge).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh" demo

cd "$ROOT"
start=$SECONDS
"$ROOT/.venv/bin/python" examples/smollm2_frankenmerge.py
echo "demo: done in $((SECONDS - start)) s"
