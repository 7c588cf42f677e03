#!/usr/bin/env bash
# Set up a virtual environment (.venv) with the test extra and run lint + the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
. .venv/bin/activate
ruff check src tests benchmarks
python -m pytest -q "$@"
