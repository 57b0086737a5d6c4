#!/usr/bin/env bash
# Run every check: lint, format, types, tests. Installs the dev environment if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-system.sh
[ -x .venv/bin/pytest ] || bash scripts/install-dev.sh
. .venv/bin/activate
ruff check .
ruff format --check .
mypy
python -m pytest "$@"
