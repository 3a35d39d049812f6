#!/usr/bin/env bash
# Run the Llama-3.2-1B-shapes study on a lent GPU machine (device tool) through the local profile
# (profiles/local: quantize and evaluate jobs packed on the GPU by their gpu_mem_mb estimates,
# benchmark jobs one at a time, each holding the whole card), as one command. Resumable: a second
# call with the same WORKDIR (while the machine stays warm) goes on where the first stopped.
#
# Environment:
#   TARGETS   "bench" (default): the benchmark JSON of each arm in $ARMS; "all": the whole study
#             (quantize, evaluate, benchmark, compare, figures) and then report.html; "tables":
#             every job that may share a GPU (prepare, quantize, evaluate) and aggregate's tables;
#             "models": the quantized model of each arm in $ARMS (prepare and quantize only)
#   SERIAL    1: GPU jobs one at a time (each quantize and evaluate job asks for the whole card),
#             otherwise packed by their gpu_mem_mb estimates; the same jobs and threads either way
#   ARMS      arms for TARGETS=bench (default: every arm of the study)
#   STUDY     the study file config/$STUDY.yaml (default llama-3.2-1b-shapes; llama-3.1-8b-shapes)
#   WORKDIR   where results/, logs/ and .snakemake/ go (default: the repository); a folder outside
#             the carried working tree survives between device calls while the machine is warm
#   BUDGET_S  wall-clock limit for everything after the install (default 480 s), so that a
#             device call's own limit never cuts the copying of results into $OUT. A snakemake
#             that an earlier call left running in WORKDIR (its limit cut) is waited for first.
#   WHEELS    wheel folder to install into /tmp/site (default .whl); SKIP_INSTALL=1 skips it
#   SNAKEMAKE_ARGS  more snakemake options (after the targets)
#   RESTORE   a study.tgz of an earlier call on a machine that has since gone back: the models
#             are built again (prepare, quantize), and the earlier evaluation and benchmark
#             outputs of every arm whose weights have the same SHA256 as before are put back and
#             marked up to date (snakemake --touch) instead of being run again
# Usage there: bash bench/gpu_shapes_study.sh   (results under $OUT when set)
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
WORKDIR=${WORKDIR:-$REPO}
[ -n "${SKIP_INSTALL:-}" ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "${WHEELS:-.whl}"/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
export PATH=/tmp/site/bin:$PATH
STUDY=${STUDY:-llama-3.2-1b-shapes}
TARGETS=${TARGETS:-bench}
CONFIG=$REPO/config/$STUDY.yaml
STUDY_ARMS=$(python3 -c "import yaml;print(' '.join(yaml.safe_load(open('$CONFIG'))['arms']))")
if [ "$TARGETS" = all ]; then
    targets=all
elif [ "$TARGETS" = tables ]; then
    targets=results/$STUDY/tables/results.csv
elif [ "$TARGETS" = models ]; then
    targets=$(for a in ${ARMS:-$STUDY_ARMS}; do echo results/$STUDY/models/$a; done)
else
    ARMS=${ARMS:-$STUDY_ARMS}
    targets=$(for a in $ARMS; do echo results/$STUDY/bench/$a.json; done)
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv
serial=()
if [ "${SERIAL:-}" = 1 ]; then
    card=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1)
    serial=(--set-resources "quantize:gpu_mem_mb=$card" "evaluate:gpu_mem_mb=$card" "benchmark:gpu_mem_mb=$card")
fi
start=$(date +%s)
deadline=$(( start + ${BUDGET_S:-480} ))
left() { echo $(( deadline - $(date +%s) > 1 ? deadline - $(date +%s) : 1 )); }
mkdir -p "$WORKDIR"; cd "$WORKDIR"
# a snakemake of an earlier call (the call's limit ended the shell, not always its children)
if [ -f .gpu_study.pid ] && kill -0 "$(cat .gpu_study.pid)" 2>/dev/null; then
    echo "waiting for the snakemake an earlier call started (pid $(cat .gpu_study.pid))"
    while kill -0 "$(cat .gpu_study.pid)" 2>/dev/null && [ "$(left)" -gt 30 ]; do sleep 5; done
fi
if [ -n "${RESTORE:-}" ]; then
    models=$(for a in $STUDY_ARMS; do echo results/$STUDY/models/$a; done)
    timeout -k 15 "$(left)" python3 -m snakemake $models -s "$REPO/Snakefile" --configfile "$CONFIG" \
        --profile "$REPO/profiles/local" --keep-going ${SNAKEMAKE_ARGS:-} 2>&1 | grep -E "^Error|Finished|exception" | tail -20
    mkdir -p /tmp/restore && tar xzf "$RESTORE" -C /tmp/restore
    restored=$(python3 - "$STUDY" <<'PY'
import json, shutil, sys
from pathlib import Path
study = sys.argv[1]
old, new = Path("/tmp/restore/results", study), Path("results", study)
targets = []
for record in sorted(old.glob("models/*/quantize.json")):
    arm = record.parent.name
    mine = new / "models" / arm / "quantize.json"
    same = mine.exists() and json.loads(mine.read_text())["sha256"] == json.loads(record.read_text())["sha256"]
    print(f"restore {arm}: weights {'identical' if same else 'differ or missing'}", file=sys.stderr)
    if not same:
        continue
    for src in [old / "bench" / f"{arm}.json", *sorted((old / "eval" / arm).glob("*"))]:
        if src.exists():
            dst = new / src.relative_to(old)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
            targets.append(str(dst))
print(" ".join(targets))
PY
)
    [ -z "$restored" ] || python3 -m snakemake $restored -s "$REPO/Snakefile" --configfile "$CONFIG" \
        --touch --cores 1 --quiet 2>&1 | tail -3
    echo "restore took $(( $(date +%s) - start )) s"
fi
# targets first: --configfile takes several values
timeout -k 15 "$(left)" python3 -m snakemake $targets -s "$REPO/Snakefile" \
    --configfile "$CONFIG" --profile "$REPO/profiles/local" --keep-going "${serial[@]}" ${SNAKEMAKE_ARGS:-} &
echo $! >.gpu_study.pid
wait $!
status=$?
echo "snakemake exit $status after $(( $(date +%s) - start )) s"
OUTDIR=${OUT:-$WORKDIR/results/$STUDY/out}
mkdir -p "$OUTDIR"
if [ "$TARGETS" = all ] && [ "$status" = 0 ]; then
    python3 -m snakemake -s "$REPO/Snakefile" --configfile "$CONFIG" --report "$OUTDIR/report.html" \
        >"$OUTDIR/report.log" 2>&1 && echo "report written" || tail -5 "$OUTDIR/report.log"
fi
python3 - "$OUTDIR" "$STUDY" <<'PY'
import glob, json, sys
from quantstudy.aggregate import collect_benchmarks
files = sorted(glob.glob(f"results/{sys.argv[2]}/bench/*.json"))
if files:
    table = collect_benchmarks(files)
    table.to_csv(f"{sys.argv[1]}/benchmark.csv", index=False)
    keep = ["arm", "mode", "scenario", "batch_size", "prompt_length", "median", "unit", "ratio_to_baseline", "roofline_fraction"]
    sub = table[table.scenario.isin(["decode", "largest_batch"])]
    print(sub[keep].to_string(index=False))
PY
cp .snakemake/log/*.snakemake.log "$OUTDIR/" 2>/dev/null
tar czf "$OUTDIR/study.tgz" results/$STUDY/bench results/$STUDY/models/*/quantize.json \
    results/$STUDY/eval results/$STUDY/tables results/$STUDY/figures results/$STUDY/report \
    logs/$STUDY 2>/dev/null
ls -la "$OUTDIR"
