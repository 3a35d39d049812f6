"""Collect per-job outputs into the study's tables: scores, memory, and a markdown summary."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

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
    for path in eval_files:
        ev = json.loads(Path(path).read_text())
        rows += result_rows(ev, quant[ev["arm"]])
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)


def load_quantize_records(model_dirs: Iterable[Path | str]) -> dict[str, dict[str, Any]]:
    """quantize.json of every arm, by arm name."""
    out = {}
    for d in model_dirs:
        rec = json.loads((Path(d) / "quantize.json").read_text())
        out[rec["arm"]] = rec
    return out


def memory_table(quant: dict[str, dict[str, Any]], baseline: str) -> pd.DataFrame:
    """Per arm: bytes in memory and on disk, and their ratio to the baseline's."""
    base = quant[baseline]
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
