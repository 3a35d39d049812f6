"""Time the workflow's own overheads on the CPU: what a study costs before any model runs.

Measures, for a synthetic study of 10 arms x 6 tasks (60 evaluation jobs):
  1. `snakemake -n` (parse, config validation, DAG build and dry-run), end to end, as a user runs it;
  2. the aggregation of 60 evaluation result files into tables/results.csv (the `aggregate`
     rule's work, called in-process);
  3. the paired statistics (stats.compare) over those 60 files' per-example records.
Prints a table; repeats each measurement and reports median and min/max. No GPU, no models:
the inputs are made up with the real file layouts.

Usage: .venv/bin/python bench/workflow_overheads.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from quantstudy import aggregate, stats  # noqa: E402

ARMS = {
    "bf16": {"method": "baseline", "dtype": "bf16"},
    "fp16": {"method": "baseline", "dtype": "fp16"},
    "int8": {"method": "bnb-int8"},
    **{
        f"{qt}{'_dq' if dq else ''}_{cd}": {
            "method": "bnb-4bit", "quant_type": qt, "double_quant": dq, "compute_dtype": cd,
        }
        for qt in ("nf4", "fp4") for dq in (True, False) for cd in ("bf16",)
    },
    "gptq": {"method": "gptq", "calibration": {"path": "config/calibration/demo.txt"}},
    "awq": {"method": "awq", "calibration": {"path": "config/calibration/demo.txt"}},
    "gptq_g64": {"method": "gptq", "group_size": 64,
                 "calibration": {"path": "config/calibration/demo.txt"}},
}  # fmt: skip
TASKS = ["coqa", "arc_easy", "arc_challenge", "hellaswag", "mmlu", "gsm8k"]
N_DOCS = 500


def timed(fn, repeats: int) -> dict[str, float]:
    """Median, min and max seconds of `repeats` calls (after one untimed warm-up)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"median": statistics.median(times), "min": min(times), "max": max(times)}


def make_study(work: Path) -> dict:
    config = {
        "study": "overheads",
        "model": {"source": "hub", "repo_id": "meta-llama/Llama-3.2-1B", "revision": "main"},
        "baseline": "bf16",
        "arms": ARMS,
        "tasks": {t: {"batch_size": 8} for t in TASKS},
    }
    (work / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return config


def fake_outputs(work: Path) -> tuple[list[Path], list[Path], list[Path]]:
    """quantize.json per arm, and eval JSON + samples per arm x task, in the workflow's layout."""
    rng = random.Random(0)
    res = work / "results" / "overheads"
    models, evals, samples = [], [], []
    for arm, spec in ARMS.items():
        d = res / "models" / arm
        d.mkdir(parents=True, exist_ok=True)
        rec = {"arm": arm, "method": spec["method"], "bits": 16, "seconds": 1.0,
               "disk_bytes": 10**9, "memory_bytes": {"total": 10**9},
               "verified": {"quantized_modules": 0}}  # fmt: skip
        (d / "quantize.json").write_text(json.dumps(rec))
        models.append(d)
        for task in TASKS:
            e = res / "eval" / arm
            e.mkdir(parents=True, exist_ok=True)
            acc = [float(rng.random() < 0.6) for _ in range(N_DOCS)]
            summary = {
                "arm": arm, "task": task, "batch_size_used": 8, "n_samples": N_DOCS,
                "results": {task: {"acc,none": sum(acc) / N_DOCS, "acc_stderr,none": 0.02}},
                "n-samples": {task: {"effective": N_DOCS}},
            }  # fmt: skip
            (e / f"{task}.json").write_text(json.dumps(summary))
            with open(e / f"{task}.samples.jsonl", "w") as f:
                for i, a in enumerate(acc):
                    rec = {"task": task, "doc_id": i, "doc_hash": str(i), "metrics": {"acc": a}}
                    f.write(json.dumps(rec) + "\n")
            evals.append(e / f"{task}.json")
            samples.append(e / f"{task}.samples.jsonl")
    return models, evals, samples


def long_table(samples: list[Path]):
    import pandas as pd

    rows = []
    for path in samples:
        arm = path.parent.name
        for line in path.read_text().splitlines():
            r = json.loads(line)
            for metric, value in r["metrics"].items():
                rows.append((r["task"], r["doc_id"], r["doc_hash"], arm, metric, value, None))
    return pd.DataFrame(
        rows, columns=["task", "doc_id", "doc_hash", "arm", "metric", "value", "subject"]
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        make_study(work)
        cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(work),
               "--configfile", str(work / "config.yaml"), "-n", "-q", "all"]  # fmt: skip

        def dry_run():
            subprocess.run(cmd, check=True, capture_output=True)

        dag = timed(dry_run, args.repeats)
        models, evals, samples = fake_outputs(work)

        def aggregation():
            quant = aggregate.load_quantize_records(models)
            aggregate.collect_results(evals, quant)
            aggregate.memory_table(quant, "bf16")

        agg = timed(aggregation, args.repeats)
        table = long_table(samples)
        comp = timed(lambda: stats.compare(table, "bf16", n_boot=2000), max(1, args.repeats // 2))
    print(f"study: {len(ARMS)} arms x {len(TASKS)} tasks ({len(evals)} evaluation jobs), "
          f"{N_DOCS} examples per task")  # fmt: skip
    print(f"{'measurement':58s} {'median s':>9s} {'min s':>7s} {'max s':>7s}")
    for name, t in [
        ("snakemake -n (parse, validate, DAG, dry-run), end to end", dag),
        ("aggregate 60 eval JSONs + 10 quantize.json into tables", agg),
        ("stats.compare on 60 x 500 per-example records", comp),
    ]:
        print(f"{name:58s} {t['median']:9.2f} {t['min']:7.2f} {t['max']:7.2f}")


if __name__ == "__main__":
    main()
