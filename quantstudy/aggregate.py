"""Collect per-job outputs into the study's tables: scores, memory, and a markdown summary."""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from . import records
from .benchmark.record import read_many as read_benchmarks

RESULT_COLUMNS = [
    "arm", "method", "bits", "task", "metric", "filter", "value", "stderr", "n", "batch_size",
]  # fmt: skip
MEMORY_COLUMNS = [
    "arm", "method", "bits", "memory_bytes", "disk_bytes", "memory_vs_baseline",
    "disk_vs_baseline", "quantize_seconds", "quantized_modules",
]  # fmt: skip


def _number(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def result_rows(eval_json: dict[str, Any], quant: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per metric of the task's own entry (the group's entry for group tasks)."""
    task = eval_json["task"]
    entry = eval_json["results"].get(task) or eval_json.get("groups", {}).get(task)
    if entry is None:
        raise ValueError(f"{eval_json['arm']}/{task}: lm-eval results have no entry for the task")
    n = eval_json.get("n-samples", {}).get(task, {}).get("effective", eval_json["n_samples"])
    rows = []
    for key, value in entry.items():
        if "," not in key or "_stderr" in key:
            continue
        metric, filt = key.split(",", 1)
        rows.append(
            {
                "arm": eval_json["arm"],
                "method": quant["method"],
                "bits": quant["bits"],
                "task": task,
                "metric": metric,
                "filter": filt,
                "value": _number(value),
                "stderr": _number(entry.get(f"{metric}_stderr,{filt}")),
                "n": int(n),
                "batch_size": eval_json["batch_size_used"],
            }
        )
    return rows


def collect_results(eval_files: Iterable[Path | str], quant: dict[str, dict]) -> pd.DataFrame:
    """The results table from every `eval/{arm}/{task}.json`."""
    rows = []
    for ev in records.successes(eval_files):
        rows += result_rows(ev, quant[ev["arm"]])
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)


def load_quantize_records(model_dirs: Iterable[Path | str]) -> dict[str, dict[str, Any]]:
    """quantize.json of every arm that was built, by arm name (failure records left out)."""
    paths = [records.quantize_record_path(d) for d in model_dirs]
    return {rec["arm"]: rec for rec in records.successes(paths)}


def memory_table(quant: dict[str, dict[str, Any]], baseline: str) -> pd.DataFrame:
    """Per arm built: bytes in memory and on disk, and their ratio to the baseline's (NaN when
    the baseline was not built)."""
    nan = {"memory_bytes": {"total": math.nan}, "disk_bytes": math.nan}
    base = quant.get(baseline, nan)
    rows = []
    for arm, rec in quant.items():
        mem = rec["memory_bytes"]["total"]
        rows.append(
            {
                "arm": arm,
                "method": rec["method"],
                "bits": rec["bits"],
                "memory_bytes": mem,
                "disk_bytes": rec["disk_bytes"],
                "memory_vs_baseline": mem / base["memory_bytes"]["total"],
                "disk_vs_baseline": rec["disk_bytes"] / base["disk_bytes"],
                "quantize_seconds": rec["seconds"],
                "quantized_modules": rec["verified"]["quantized_modules"],
            }
        )
    return pd.DataFrame(rows, columns=MEMORY_COLUMNS)


def _markdown(df: pd.DataFrame, floatfmt: str = ".3f") -> str:
    def fmt(v):
        if isinstance(v, float):
            return "–" if math.isnan(v) else format(v, floatfmt)
        return str(v)

    head = "| " + " | ".join(map(str, df.columns)) + " |"
    sep = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, sep, *body])


def summary_markdown(results: pd.DataFrame, memory: pd.DataFrame, study: str, baseline: str) -> str:
    """A markdown summary: scores per arm and task (± stderr) and the memory table."""
    res = results.copy()
    res["column"] = res["task"] + " " + res["metric"]
    res["cell"] = [
        f"{v:.3f}" + (f" ± {s:.3f}" if not math.isnan(s) else "")
        for v, s in zip(res["value"], res["stderr"])
    ]
    order = list(dict.fromkeys(memory["arm"]))
    scores = res.pivot_table(index="arm", columns="column", values="cell", aggfunc="first")
    scores = scores.reindex(order).reset_index()
    mem = memory[["arm", "method", "bits", "memory_bytes", "disk_bytes", "disk_vs_baseline"]].copy()
    mem["memory_MB"] = mem.pop("memory_bytes") / 1e6
    mem["disk_MB"] = mem.pop("disk_bytes") / 1e6
    return (
        f"# Study `{study}`\n\nBaseline arm: `{baseline}`. Scores are lm-eval's, ± its standard "
        "error.\n\n## Scores\n\n"
        + _markdown(scores.fillna("missing"))
        + "\n\n## Memory\n\n"
        + _markdown(mem, ".2f")
        + "\n"
    )


BENCH_COLUMNS = [
    "arm", "method", "device_kind", "device_name", "mode", "supported", "reason", "scenario",
    "batch_size", "prompt_length", "new_tokens", "median", "min", "max", "unit",
    "baseline_median", "ratio_to_baseline", "ratio_kind", "roofline_ms", "roofline_fraction",
    "peak_allocated_bytes", "peak_reserved_bytes", "peak_allocated_own_bytes", "oom",
    "int4_kernel", "fp8_kernel", "step_build", "baseline_step_build",
]  # fmt: skip

_SCENARIO_VALUE = {"prefill": ("ms", "ms"), "decode": ("ms_per_token", "ms/token"),
                   "throughput": ("tokens_per_s", "tokens/s")}  # fmt: skip


def _stat(rec: dict[str, Any] | None, key: str) -> dict[str, float]:
    value = (rec or {}).get(key) or {}
    return {k: _number(value.get(k)) for k in ("median", "min", "max")}


def step_build(build: dict[str, Any] | None) -> str | None:
    """How a model's step was built in a static-like mode (the record's modes.<mode>.builds
    entry), in words: the compile mode kept (of those tried) and the projections fused."""
    if not build:
        return None
    words = [build.get("compile_mode") or "not compiled"]
    tried = build.get("tried") or {}
    if tried:
        times = ", ".join(
            f"{mode} {t['ms_per_token']:.3f}" if t.get("ms_per_token") else f"{mode} failed"
            for mode, t in tried.items()
        )
        words[0] += f" (fastest of {times} ms/token)"
    fusion = build.get("fusion")
    if fusion:
        fused = {k: v for k, v in (fusion.get("fused") or {}).items() if v}
        words.append(
            "fused " + ", ".join(f"{k} x{v}" for k, v in fused.items())
            if fused
            else f"not fused: {fusion.get('reason')}"
        )
    return "; ".join(words)


def bench_rows(bench: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per arm, mode and measurement of a `bench/{arm}.json` (unsupported modes included)."""
    base = {
        "arm": bench["arm"],
        "method": (bench["models"]["arm"] or {}).get("method"),
        "device_kind": bench["device_kind"],
        "device_name": bench["device"].get("name"),
        # the op that ran a GPTQ/AWQ arm's int4 layers, an FP8-dynamic arm's FP8 layers (None:
        # the arm has none)
        "int4_kernel": (((bench["models"]["arm"] or {}).get("int4")) or {}).get("op"),
        "fp8_kernel": (((bench["models"]["arm"] or {}).get("fp8")) or {}).get("op"),
    }
    # Interleaved jobs keep the baseline resident beside the arm: the peak the arm itself needs is
    # the measured peak less what the other model holds.
    other = 0
    if (bench.get("interleaving") or {}).get("strategy") == "interleaved":
        other = (bench["models"].get("baseline") or {}).get(
            "cuda_allocated_after_warmup_bytes"
        ) or 0
    rows = []
    for mode, res in bench["modes"].items():
        if not res.get("supported", False):
            rows.append({**base, "mode": mode, "supported": False, "reason": res.get("reason")})
            continue
        builds = res.get("builds") or {}
        built = {
            "step_build": step_build(builds.get("arm")),
            "baseline_step_build": step_build(builds.get("baseline")),
        }
        for scenario, (key, unit) in _SCENARIO_VALUE.items():
            entries = res.get(scenario)
            entries = [entries] if isinstance(entries, dict) else entries or []
            for e in entries:
                arm, baseline = e.get("arm") or {}, e.get("baseline") or {}
                mem = arm.get("memory") or {}
                ratio_kind = "throughput_ratio" if scenario == "throughput" else "time_ratio"
                rows.append(
                    {
                        **base,
                        **built,
                        "mode": mode,
                        "supported": True,
                        "reason": None,
                        "scenario": scenario,
                        "batch_size": e.get("batch_size"),
                        "prompt_length": e.get("prompt_length"),
                        "new_tokens": e.get("new_tokens"),
                        **_stat(arm, key),
                        "unit": unit,
                        "baseline_median": _stat(baseline, key)["median"],
                        "ratio_to_baseline": _number(e.get(ratio_kind)),
                        "ratio_kind": ratio_kind,
                        "roofline_ms": _number(arm.get("roofline_ms")),
                        "roofline_fraction": _number(arm.get("roofline_fraction")),
                        "peak_allocated_bytes": _number(mem.get("peak_allocated_bytes")),
                        "peak_reserved_bytes": _number(mem.get("peak_reserved_bytes")),
                        "peak_allocated_own_bytes": _number(mem.get("peak_allocated_bytes"))
                        - other,
                        "oom": bool(arm.get("oom")),
                    }
                )
    for mode, res in (bench.get("largest_batch") or {}).items():
        if not res.get("supported", False):
            rows.append(
                {**base, "mode": mode, "supported": False, "reason": res.get("reason"),
                 "scenario": "largest_batch", "batch_size": res.get("batch_size"),
                 "unit": "tokens/s", "oom": False}
            )  # fmt: skip
            continue
        rows.append(
            {
                **base,
                "mode": mode,
                "supported": True,
                # a kernel that ended the search process before memory ran out
                "reason": (res.get("stopped_by") or {}).get("reason"),
                "scenario": "largest_batch",
                "batch_size": res.get("batch_size"),
                "prompt_length": res.get("prompt_length"),
                "new_tokens": res.get("new_tokens"),
                **_stat(res.get("throughput"), "tokens_per_s"),
                "unit": "tokens/s",
                "baseline_median": _stat(
                    (res.get("baseline") or {}).get("throughput"), "tokens_per_s"
                )["median"],
                "ratio_to_baseline": _number(res.get("throughput_ratio")),
                "ratio_kind": "throughput_ratio",
                "oom": False,
            }
        )
    return rows


def collect_benchmarks(bench_files: Iterable[Path | str]) -> pd.DataFrame:
    """The benchmark table from every `bench/{arm}.json`."""
    rows = []
    for bench in read_benchmarks(bench_files):
        rows += bench_rows(bench)
    return pd.DataFrame(rows, columns=BENCH_COLUMNS)
