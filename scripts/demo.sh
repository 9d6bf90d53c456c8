#!/usr/bin/env bash
# The demo: set up .venv (scripts/setup.sh), then frankenmerge SmolLM2-135M with itself and
# compare generations (examples/smollm2_frankenmerge.py; output in out/smollm2-frankenmerge).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"

cd "$ROOT"
start=$SECONDS
"$ROOT/.venv/bin/python" examples/smollm2_frankenmerge.py
echo "demo: done in $((SECONDS - start)) s"
