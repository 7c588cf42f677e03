#!/usr/bin/env bash
# Set up a virtual environment (.venv) with the test extra and run lint + the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
# The web app's browser tests drive Debian's Chromium (Playwright cannot download a browser
# here). Installed once, when missing; needs root (as in CI) or a passwordless sudo.
if [ ! -x /usr/bin/chromium ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends chromium
fi
. .venv/bin/activate
ruff check src tests benchmarks
python -m pytest -q "$@"
