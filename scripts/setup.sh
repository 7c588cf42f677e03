#!/usr/bin/env bash
# Create .venv and install customgpt into it (editable). Usage: scripts/setup.sh [EXTRA]
# PyTorch is installed first with an exact pin (on a CPU-only machine that is the CPU build);
# set CUSTOMGPT_TORCH to choose another torch requirement, e.g. CUSTOMGPT_TORCH="torch>=2.4".
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-}"
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q "${CUSTOMGPT_TORCH:-torch==2.13.0}"
if [ -n "$extra" ]; then
  python -m pip install -q -e ".[$extra]"
else
  python -m pip install -q -e .
fi
