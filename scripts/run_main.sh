#!/usr/bin/env bash
# Fresh machine -> trained model: create .venv if absent, then train a small InternImage from scratch on
# scikit-learn's bundled digits (held-out 20%), save it to outputs/digits, reload it with
# AutoModelForImageClassification + pipeline() and print predictions and the held-out accuracy.
# Extra arguments go to scripts/train.py (e.g. `bash scripts/run_main.sh --num_train_epochs 20`).
# The demo is meant to be rerun: --overwrite_output_dir replaces the previous demo run in outputs/digits (its model
# and checkpoints only); scripts/train.py itself refuses an output_dir that holds another run.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
    .venv/bin/pip install torch==2.14.1 torchvision==0.29.1 -e ".[train]"
fi
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"  # the built-in run needs no network
exec .venv/bin/python scripts/train.py --output_dir outputs/digits --overwrite_output_dir "$@"
