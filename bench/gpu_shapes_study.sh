#!/usr/bin/env bash
# Run the Llama-3.2-1B-shapes study's quantize + benchmark jobs on a lent GPU machine (device
# tool), as one command: wheels from .whl/, quantize jobs packed on the GPU, benchmark jobs one at
# a time (each asks for the whole card), then the benchmark table. Arms: $ARMS (default: all).
# Usage there: bash bench/gpu_shapes_study.sh   (results under $OUT when set)
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
# WORKDIR: where results/ and logs/ go (default: the repository); a folder outside a carried
# path survives between device calls while the machine stays warm.
WORKDIR=${WORKDIR:-$REPO}
[ -n "${SKIP_INSTALL:-}" ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "${WHEELS:-.whl}"/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
export PATH=/tmp/site/bin:$PATH
STUDY=llama-3.2-1b-shapes
CARD_MB=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1)
ARMS=${ARMS:-$(python3 -c "import yaml;print(' '.join(yaml.safe_load(open('$REPO/config/$STUDY.yaml'))['arms']))")}
targets=$(for a in $ARMS; do echo results/$STUDY/bench/$a.json; done)
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv
start=$(date +%s)
# targets first: --configfile, --resources and --set-resources each take several values
mkdir -p "$WORKDIR"; cd "$WORKDIR"
timeout -k 15 "${BUDGET_S:-480}" python3 -m snakemake $targets -s "$REPO/Snakefile" --configfile "$REPO/config/$STUDY.yaml" \
    --resources gpu_mem_mb="$CARD_MB" --set-resources benchmark:gpu_mem_mb="$CARD_MB" \
    -c 16 --keep-going ${SNAKEMAKE_ARGS:-}
echo "snakemake exit $? after $(( $(date +%s) - start )) s"
OUTDIR=${OUT:-$WORKDIR/results/$STUDY/out}
mkdir -p "$OUTDIR"
python3 - "$OUTDIR" <<'PY'
import glob, json, sys
from quantstudy.aggregate import collect_benchmarks
files = sorted(glob.glob("results/llama-3.2-1b-shapes/bench/*.json"))
table = collect_benchmarks(files)
table.to_csv(f"{sys.argv[1]}/benchmark.csv", index=False)
keep = ["arm", "mode", "scenario", "batch_size", "prompt_length", "median", "unit", "ratio_to_baseline", "roofline_fraction"]
sub = table[table.scenario.isin(["decode", "largest_batch"]) | ((table.scenario == "prefill") & (table.prompt_length.isin([128, 2048])))]
print(sub[keep].to_string(index=False))
PY
tar czf "$OUTDIR/study.tgz" results/$STUDY/bench results/$STUDY/models/*/quantize.json logs/$STUDY 2>/dev/null
ls -la "$OUTDIR"
