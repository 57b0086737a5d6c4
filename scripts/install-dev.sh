#!/usr/bin/env bash
# Create .venv with everything the tests, the exporter and the parity checks need:
# torch + torchvision (from this machine's local wheels), medsearch with its dev extra,
# and the reference implementation (medimageinsights 0.1.1, without its pinned extras).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.14.1 torchvision==0.29.1
python -m pip install -q -e '.[dev]'
python -m pip install -q --no-deps medimageinsights==0.1.1
# ftfy would change the reference tokenizer's clean-up; the reference does not depend on it
python -m pip uninstall -q -y ftfy 2>/dev/null || true
echo "dev environment ready in .venv"
