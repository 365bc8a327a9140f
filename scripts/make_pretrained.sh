#!/usr/bin/env bash
# Remake the shipped model mcvd/weights/smmnist_demo_cpu.mcvd (`mcvd.pretrained`):
# train with the configs kept in the repository, in three stages, then write the EMA weights
# as a model file and print its SHA-256 (to record in mcvd/pretrained.py).
#
#   scripts/make_pretrained.sh [WORKDIR]      # default runs/pretrained; resumes the runs there
#
# Stage 1: configs/pretrained/smmnist_demo_cpu.yml, 22,000 steps from random weights (about
# 70 min on two cores). Stage 2: configs/pretrained/smmnist_demo_cpu_finetune.yml, 30,000 more
# steps from stage 1's EMA weights (about 90 min). Stage 3: configs/pretrained/smmnist_demo_cpu_guidance.yml,
# 6,000 more steps from stage 2's EMA weights with the past masked at times, for classifier-free guidance
# (about 26 min). Two CPU threads, as the shipped file was made
# (threads change float summation order, so another count gives other weights of the same quality).
set -euo pipefail
cd "$(dirname "$0")/.."
WORKDIR=${1:-runs/pretrained}
PY=${PY:-.venv/bin/python}
OMP_NUM_THREADS=2 "$PY" -m mcvd train --config configs/pretrained/smmnist_demo_cpu.yml --workdir "$WORKDIR/stage1"
OMP_NUM_THREADS=2 "$PY" -m mcvd train --config configs/pretrained/smmnist_demo_cpu_finetune.yml \
    --workdir "$WORKDIR/stage2" --init-from "$WORKDIR/stage1/checkpoint.pt"
OMP_NUM_THREADS=2 "$PY" -m mcvd train --config configs/pretrained/smmnist_demo_cpu_guidance.yml \
    --workdir "$WORKDIR/stage3" --init-from "$WORKDIR/stage2/checkpoint.pt"
"$PY" - "$WORKDIR/stage3/checkpoint.pt" mcvd/weights/smmnist_demo_cpu.mcvd <<'PY'
import sys
from mcvd.fileio import file_sha256
from mcvd.loader import read
from mcvd.nn import save_model

source = read(sys.argv[1])
model, _ = source.build()  # the EMA weights
# The last stage's run config goes with them: it says the past was masked in training, which guidance needs.
save_model(sys.argv[2], model, overwrite=True, run_config=source.run_config)
print(f"{sys.argv[2]}: SHA-256 {file_sha256(sys.argv[2])}")
PY
