#!/usr/bin/env bash
# The test command: set up .venv (scripts/setup.sh), then run pytest over tests/.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not mergekit"`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"

cd "$ROOT"
# Hygiene first (seconds): lint and formatting over the package, tests, benches and examples, and
# the import contracts (the core imports no tool; no import cycles), from pyproject.toml.
"$ROOT/.venv/bin/ruff" check mergesmith tests bench examples scripts
"$ROOT/.venv/bin/ruff" format --check mergesmith tests bench examples scripts
"$ROOT/.venv/bin/lint-imports"
start=$SECONDS
status=0
"$ROOT/.venv/bin/python" -m pytest "$@" || status=$?
echo "tests: pytest exited $status after $((SECONDS - start)) s"
if [[ $status -eq 5 ]]; then
  # pytest's "no tests were collected": a green run that checked nothing is a failure.
  echo "tests: FAILED: pytest collected no tests" >&2
fi
exit "$status"
