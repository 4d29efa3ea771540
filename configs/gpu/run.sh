#!/bin/sh
# One device call of the GPU campaign (docs/results.md says how to drive it).
# Runs on the lent machine, in the repository root, with .whl and .campaign carried:
#   sh configs/gpu/run.sh SECONDS
# Installs the carried wheels (kymatio, nnAudio, pedalboard and kymatio's needs),
# runs the plan's unfinished stages for SECONDS (default 540) and packs the
# state, the exported model and the log into $OUT.
set -e
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
mkdir -p .campaign
exec python3 -m tympan_cli train campaign --plan configs/gpu/campaign.toml --state .campaign \
    --device cuda --deadline-s "${1:-540}" --pack "${OUT:?OUT is the device call's output folder}" \
    --quiet
