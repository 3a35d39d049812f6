#!/usr/bin/env bash
# Time the Llama-3.2-1B-shapes study's GPU-shareable jobs (prepare, 13 quantize, 26 evaluate,
# aggregate; bench/gpu_shapes_study.sh TARGETS=tables) twice on one GPU machine, from nothing each
# time (separate work folders): first packed by the jobs' gpu_mem_mb estimates (profiles/local),
# then one at a time (SERIAL=1: each GPU job asks for the whole card). Same jobs, same threads,
# same profile otherwise. Packed runs first, so any warm file cache favours the serial run.
# Benchmark jobs are left out: they hold a whole card in both set-ups.
#
# The two runs take ~20 minutes together, longer than one device call (10 minutes), so they run
# in their own process session (setsid), which outlives the call while the machine stays warm:
#   bash bench/gpu_packing_timing.sh start   # installs .whl, starts both runs, returns
#   bash bench/gpu_packing_timing.sh wait N  # waits up to N s for them; copies logs to $OUT
# Both runs use a copy of the working tree under $TIMING_DIR (default /tmp/qstiming).
# Each run's wall time is the "snakemake exit ... after N s" line of its log (first job's start
# to the last job's end, both in one uninterrupted snakemake).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=${TIMING_DIR:-/tmp/qstiming}
case "${1:-}" in
start)
    mkdir -p "$ROOT"
    [ -n "${SKIP_INSTALL:-}" ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site "${WHEELS:-.whl}"/*.whl || exit 1
    # a copy of the tree: the next call's copy of the working tree must not change files under the runs
    rm -rf "$ROOT/repo" && mkdir -p "$ROOT/repo" && cp -a . "$ROOT/repo/" && cd "$ROOT/repo" || exit 1
    setsid bash -c "
        SKIP_INSTALL=1 TARGETS=tables WORKDIR=$ROOT/packed BUDGET_S=3000 OUT=$ROOT/packed-out \
            bash bench/gpu_shapes_study.sh >$ROOT/packed.log 2>&1
        SKIP_INSTALL=1 TARGETS=tables SERIAL=1 WORKDIR=$ROOT/serial BUDGET_S=3000 OUT=$ROOT/serial-out \
            bash bench/gpu_shapes_study.sh >$ROOT/serial.log 2>&1
        touch $ROOT/done" </dev/null >/dev/null 2>&1 &
    echo "started; logs in $ROOT"
    ;;
wait)
    end=$(( $(date +%s) + ${2:-500} ))
    while [ ! -f "$ROOT/done" ] && [ "$(date +%s)" -lt "$end" ]; do sleep 5; done
    for run in packed serial; do
        [ -f "$ROOT/$run.log" ] || continue
        echo "== $run: $(grep -c 'Finished job' "$ROOT/$run.log") jobs finished"
        grep -E "snakemake exit|^Error|exception" "$ROOT/$run.log" | tail -5
        [ -z "${OUT:-}" ] || cp "$ROOT/$run.log" "$OUT/"
        [ -z "${OUT:-}" ] || cp "$ROOT/$run-out"/*.snakemake.log "$OUT/$run.snakemake.log" 2>/dev/null
        [ -z "${OUT:-}" ] || cp "$ROOT/$run-out/study.tgz" "$OUT/$run-study.tgz" 2>/dev/null
    done
    [ -f "$ROOT/done" ] && echo "both runs done" || echo "still running"
    ;;
*)
    echo "usage: $0 start | wait SECONDS" >&2
    exit 2
    ;;
esac
