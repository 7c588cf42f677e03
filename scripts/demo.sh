#!/usr/bin/env bash
# Set up .venv and run the main job: a small GPT trained from scratch on CPU to tell spam
# from ham (the packaged `spam-small` config). The SMS Spam Collection is downloaded and
# checksum-verified on first use; offline, point CUSTOMGPT_DATA_DIR at a folder that holds it.
# Extra arguments are config overrides, e.g.: bash scripts/demo.sh --train.epochs 3
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
customgpt finetune classify --config spam-small "$@"
