"""The analysis stage: per-example records into paired statistics and a decision table per arm.

Inputs are the jobs' own files (`eval/{arm}/{task}.samples.jsonl` and `.json`,
`models/{arm}/quantize.json`, `bench/{arm}.json`), read for the arms and tasks that have them;
every configured arm and task still gets its rows, marked "missing" where its outputs are absent.
The statistics themselves are :func:`quantstudy.stats.compare`; this module only loads, orients
and summarises.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from . import records, report, stats
from .aggregate import load_quantize_records
from .benchmark.record import read_many as read_benchmarks
from .provenance import code_versions, mixed_code_warning
from .report import VERDICT_PREFIX

SAMPLES_SUFFIX = ".samples.jsonl"
DECISION_COLUMNS = [
    "arm", "method", "bits", "role", "status", "caveat", "memory_bytes", "memory_vs_baseline",
    "disk_bytes", "speed_vs_baseline", "speed_measure", "worst_loss", "worst_loss_diff",
    "worst_loss_task", "worst_loss_metric", "recommended",
]  # fmt: skip
"""Columns of the decision table before its one verdict column per task (``verdict:<task>``)."""

SPEED_MODES = ("static", "eager")
"""Execution modes whose batch-1 decode speed is the decision's speed, first supported wins."""


# --------------------------------------------------------------------------- what failed
# compare reads every configured output; a job that failed left a failure record in its place
# (quantstudy.records), which says why.


def failed_jobs(
    model_dirs: Iterable[Path | str],
    eval_files: Iterable[Path | str],
    bench_files: Iterable[Path | str],
) -> list[dict[str, Any]]:
    """The failure records among the analysis' inputs, as [{stage, arm, task, reason}]."""
    paths = [records.quantize_record_path(d) for d in model_dirs] + [*eval_files, *bench_files]
    return [
        {"stage": r["stage"], "arm": r["arm"], "task": r.get("task"), "reason": r["reason"]}
        for r in records.failures(paths)
    ]


# --------------------------------------------------------------------------- loading


def arm_task_of(samples_path: Path | str) -> tuple[str, str]:
    """(arm, task) of an `eval/{arm}/{task}.samples.jsonl` path."""
    path = Path(samples_path)
    if not path.name.endswith(SAMPLES_SUFFIX):
        raise ValueError(f"{path}: not a {SAMPLES_SUFFIX} file")
    return path.parent.name, path.name[: -len(SAMPLES_SUFFIX)]


def _numeric(value: Any) -> float | None:
    """A per-example metric value as float; None for values that are not one number."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def _bad_value(
    path: Path | str | None, arm: str, task: str, rec: Mapping[str, Any], metric: str, what: str
) -> ValueError:
    """The error for a record whose metric value cannot be used, naming where it is."""
    where = f"{path}" if path is not None else f"samples of task {task!r}"
    return ValueError(
        f"{where}: arm {arm!r}, doc_id {rec.get('doc_id')!r}"
        + (f" (subtask {rec['task']!r})" if rec.get("task") not in (None, task) else "")
        + f": metric {metric!r} {what}. Every item must have a score on every metric of its "
        "task for the arms to be compared item by item; rerun this evaluation."
    )


def sample_rows(
    records: Iterable[Mapping[str, Any]], arm: str, task: str, path: Path | str | None = None
) -> list[dict]:
    """Long-table rows (task, doc_id, doc_hash, arm, metric, value, subject) of one samples file.

    ``subject`` is the record's own task when it differs from the configured one (the subtask of
    a group such as MMLU), else None. Metrics whose per-example value is not a single number
    (perplexity tasks log (loglikelihood, length) pairs, aggregated over the corpus) are skipped:
    they cannot be paired item by item.

    A value that cannot be scored is an error naming ``path`` (the file), the arm, the doc_id and
    the metric: NaN or infinity anywhere, and a value that is missing, null or not a number for
    a metric that other records of the same (sub)task score with a number. Skipping it instead
    would drop the item from one arm only, which surfaces much later as "arms saw different
    items".
    """
    records = list(records)
    numeric: dict[str, set[str]] = {}  # (sub)task -> metrics some record scores with a number
    for rec in records:
        own = rec.get("task") or task
        for metric, raw in rec["metrics"].items():
            if _numeric(raw) is not None:
                numeric.setdefault(own, set()).add(metric)
    rows = []
    for rec in records:
        own = rec.get("task") or task
        expected = numeric.get(own, set())
        absent = sorted(expected - rec["metrics"].keys())
        if absent:
            raise _bad_value(path, arm, task, rec, absent[0], "is missing")
        for metric, raw in rec["metrics"].items():
            value = _numeric(raw)
            if value is None:
                if isinstance(raw, float):  # NaN or infinity
                    raise _bad_value(path, arm, task, rec, metric, f"is {raw}")
                if metric in expected:
                    raise _bad_value(path, arm, task, rec, metric, f"is {raw!r}, not a number")
                continue
            rows.append(
                {
                    "task": task,
                    "doc_id": rec["doc_id"],
                    "doc_hash": rec.get("doc_hash"),
                    "arm": arm,
                    "metric": metric,
                    "value": value,
                    "subject": own if own != task else None,
                }
            )
    return rows


def load_samples(samples_files: Iterable[Path | str]) -> pd.DataFrame:
    """The long table of per-example scores from `eval/{arm}/{task}.samples.jsonl` files."""
    rows: list[dict] = []
    for path in samples_files:
        arm, task = arm_task_of(path)
        with open(path) as f:
            lines = [json.loads(line) for line in f if line.strip()]
        rows += sample_rows(lines, arm, task, path)
    columns = ["task", "doc_id", "doc_hash", "arm", "metric", "value", "subject"]
    return pd.DataFrame(rows, columns=columns)


def higher_is_better(eval_jsons: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], bool]:
    """{(task, metric name): higher is better} from lm-eval's results of every evaluation.

    Metric names are those of the samples files: the filter is not part of the lookup.
    A metric lm-eval says nothing about counts as higher-is-better.
    """
    out: dict[tuple[str, str], bool] = {}
    for ev in eval_jsons:
        task = ev["task"]
        for entries in (ev.get("higher_is_better") or {}).values():
            for metric, hib in (entries or {}).items():
                if hib is not None:
                    out[(task, metric)] = bool(hib)
    return out


def _base_metric(metric: str) -> str:
    """The metric's name without its filter (`exact_match,strict-match` -> `exact_match`)."""
    return str(metric).split(",", 1)[0]


def orient(comparisons: pd.DataFrame, hib: Mapping[tuple[str, str], bool]) -> pd.DataFrame:
    """Comparisons with a ``higher_is_better`` column and verdicts that read as gain or loss.

    :func:`quantstudy.stats.compare` calls a positive difference "better". For a metric where
    lower is better (perplexity, bits per byte) a positive difference is a loss, so "better"
    and "worse" swap there; the numbers stay as they are (arm minus baseline): ``diff``, its CI
    and the equivalence interval keep their sign, so a "better" lower-is-better row has a CI
    below 0 (:func:`quantstudy.stats.check_verdicts` reads ``higher_is_better`` for that), and
    the equivalence interval, symmetric in the margin, needs no change.
    """
    out = comparisons.copy()
    out["higher_is_better"] = [
        hib.get((t, _base_metric(m)), True) if isinstance(m, str) else True
        for t, m in zip(out["task"], out["metric"], strict=True)
    ]
    swap = {"better": "worse", "worse": "better"}
    lower = ~out["higher_is_better"]
    out.loc[lower, "verdict"] = out.loc[lower, "verdict"].map(lambda v: swap.get(v, v))
    return out


# --------------------------------------------------------------------------- speed and memory


@dataclass(frozen=True)
class Speed:
    """An arm's decode speed relative to the baseline, and how it was measured."""

    ratio: float  # baseline ms/token / arm ms/token: > 1 means the arm decodes faster
    measure: str


def decode_speed(bench: Mapping[str, Any]) -> Speed:
    """Batch-1 decode speed of a `bench/{arm}.json` relative to its interleaved baseline.

    The static mode's decode is taken where it ran, else the eager mode's; the ratio is the
    baseline's median ms/token over the arm's (> 1 = faster). The baseline arm is 1 by definition.
    """
    for mode in SPEED_MODES:
        res = (bench.get("modes") or {}).get(mode) or {}
        decode = res.get("decode")
        if not res.get("supported") or not decode:
            continue
        batch = decode.get("batch_size", 1)
        measure = (
            f"{mode} mode, decode ms/token at batch {batch} on {bench.get('device_kind', '?')}: "
            "baseline / arm (> 1 = faster)"
        )
        if bench.get("is_baseline"):
            return Speed(1.0, measure)
        arm_ms = ((decode.get("arm") or {}).get("ms_per_token") or {}).get("median")
        base_ms = ((decode.get("baseline") or {}).get("ms_per_token") or {}).get("median")
        if arm_ms and base_ms and not (decode.get("arm") or {}).get("oom"):
            return Speed(float(base_ms) / float(arm_ms), measure)
    return Speed(math.nan, "not measured")


# --------------------------------------------------------------------------- the analysis


def analyse(
    samples: pd.DataFrame,
    eval_jsons: Sequence[Mapping[str, Any]],
    baseline: str,
    arms: Sequence[str],
    tasks: Sequence[str],
    analysis: Mapping[str, Any],
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(scores, comparisons) of every configured arm and task, verdicts oriented by metric.

    ``analysis`` is the config's `analysis` section (margin, alpha, n_boot, seed). Every row is
    checked against its own intervals (:func:`quantstudy.stats.check_verdicts`) after the
    orientation, so no table with a verdict its intervals contradict is ever written.
    """
    margin = analysis.get("margin", 0.01)
    alpha = analysis.get("alpha", 0.05)
    scores, comparisons = stats.compare(
        samples,
        baseline,
        margin=margin,
        alpha=alpha,
        n_boot=analysis.get("n_boot", 2000),
        seed=analysis.get("seed", 0),
        arms=list(arms),
        tasks=list(tasks),
    )
    comparisons = orient(comparisons, higher_is_better(eval_jsons))
    stats.check_verdicts(comparisons, margin, alpha)
    return scores, comparisons


def deciding_rows(comparisons: pd.DataFrame, primary: Mapping[str, str] | None) -> pd.DataFrame:
    """The comparisons that decide verdicts: a task's primary metric where named, else all."""
    if not primary:
        return comparisons
    keep = [
        t not in primary or pd.isna(m) or m == primary[t]
        for t, m in zip(comparisons["task"], comparisons["metric"], strict=True)
    ]
    return comparisons[keep]


def worst_loss(rows: pd.DataFrame) -> dict[str, Any]:
    """The largest significant loss among one arm's comparisons ("worse" verdicts), or none."""
    worse = rows[rows["verdict"] == "worse"]
    none = {"worst_loss": "none", "worst_loss_diff": math.nan}
    if worse.empty:
        return none | {"worst_loss_task": None, "worst_loss_metric": None}
    sign = worse["higher_is_better"].map(lambda h: 1.0 if h else -1.0)
    row = worse.loc[(worse["diff"] * sign).idxmin()]
    text = (
        f"{row['diff']:+.3f} on {row['task']} {row['metric']} "
        f"(95% CI {row['diff_ci_low']:+.3f} to {row['diff_ci_high']:+.3f}, "
        f"Holm p = {row['p_holm']:.2g})"
    )
    return {
        "worst_loss": text,
        "worst_loss_diff": float(row["diff"]),
        "worst_loss_task": row["task"],
        "worst_loss_metric": row["metric"],
    }


def _gap_reason(arm: str, task: str, baseline: str, missing: Mapping[Any, str]) -> str:
    """Why an arm has no verdict on a task, in a few words."""
    if (arm, task) in missing:
        return missing[(arm, task)]
    if baseline in missing or (baseline, task) in missing:
        return "has no baseline to compare with"
    return "not evaluated"


def decision_table(
    comparisons: pd.DataFrame,
    arms: Mapping[str, Mapping[str, Any]],
    baseline: str,
    tasks: Sequence[str],
    quant: Mapping[str, Mapping[str, Any]],
    speeds: Mapping[str, Speed],
    missing: Mapping[Any, str],
    rule: str,
    primary: Mapping[str, str] | None = None,
    caveats: Mapping[str, str] | None = None,
) -> tuple[pd.DataFrame, stats.Recommendation]:
    """One row per configured arm: memory, speed, verdict per task, worst loss, recommendation.

    ``arms`` is the config's arms (every one gets a row, in config order); ``quant`` the
    quantize.json of the arms that were built; ``speeds`` the decode speed of the benchmarked
    ones; ``missing`` says why outputs are absent ({arm: reason} for an arm that was not built,
    {(arm, task): reason} for an evaluation that did not run); ``caveats`` what weakens an arm's
    comparison without removing it (see :func:`batch_caveats`). The recommendation
    is :func:`quantstudy.stats.recommend` under ``rule`` over the non-baseline arms.
    """
    deciding = deciding_rows(comparisons, primary)
    verdicts = stats.task_verdicts(deciding, primary)
    base_rec = quant.get(baseline)
    base_mem = base_rec["memory_bytes"]["total"] if base_rec else math.nan
    rows, decision_rows = [], []
    for arm, spec in arms.items():
        rec = quant.get(arm)
        memory = float(rec["memory_bytes"]["total"]) if rec else math.nan
        speed = speeds.get(arm) or Speed(math.nan, missing.get(("benchmark", arm), "not measured"))
        arm_verdicts = {t: verdicts.get(arm, {}).get(t, "missing") for t in tasks}
        if arm == baseline:
            arm_verdicts = {t: "baseline" for t in tasks}
        status = "ok" if rec else f"missing: {missing.get(arm, 'not built')}"
        if rec and arm != baseline and "missing" in arm_verdicts.values():
            gaps = [t for t, v in arm_verdicts.items() if v == "missing"]
            status = "incomplete: " + "; ".join(
                f"{t} {_gap_reason(arm, t, baseline, missing)}" for t in gaps
            )
        elif rec and arm == baseline:
            gaps = [t for t in tasks if (arm, t) in missing]
            if gaps:
                status = "incomplete: " + "; ".join(f"{t} {missing[(arm, t)]}" for t in gaps)
        row = {
            "arm": arm,
            "method": (rec or {}).get("method", spec.get("method")),
            "bits": (rec or {}).get("bits"),
            "role": "baseline" if arm == baseline else "candidate",
            "status": status,
            "caveat": (caveats or {}).get(arm, ""),
            "memory_bytes": memory,
            "memory_vs_baseline": memory / base_mem if base_mem else math.nan,
            "disk_bytes": float(rec["disk_bytes"]) if rec else math.nan,
            "speed_vs_baseline": speed.ratio,
            "speed_measure": speed.measure,
            "recommended": False,
        }
        row |= worst_loss(deciding[deciding["arm"] == arm])
        row |= {f"{VERDICT_PREFIX}{t}": v for t, v in arm_verdicts.items()}
        rows.append(row)
        if arm != baseline:
            decision_rows.append(stats.DecisionRow(arm, memory, speed.ratio, arm_verdicts))
    recommendation = stats.recommend(decision_rows, rule)
    table = pd.DataFrame(rows, columns=DECISION_COLUMNS + [f"{VERDICT_PREFIX}{t}" for t in tasks])
    table["recommended"] = table["arm"] == recommendation.arm
    return table, recommendation


def batch_caveats(eval_jsons: Iterable[Mapping[str, Any]], baseline: str) -> dict[str, str]:
    """{arm: words} for each arm that ran a task at another batch size than the baseline did
    (an evaluate job retried after an out-of-memory runs at a smaller batch): its verdict on that
    task then also carries the batch size's effect on lm-eval's scores."""

    def size(e: Mapping[str, Any]) -> str:
        k = int(e.get("batch_halvings") or 0)
        return f"{e.get('batch_size_used')}" + (
            f" (halved {k}× after an out-of-memory)" if k else ""
        )

    runs = {(e["arm"], e["task"]): e for e in eval_jsons}
    out: dict[str, list[str]] = {}
    for (arm, task), run in sorted(runs.items()):
        base = runs.get((baseline, task))
        if arm == baseline or base is None:
            continue
        if run.get("batch_size_used") == base.get("batch_size_used"):
            continue
        out.setdefault(arm, []).append(
            f"{task} ran at batch {size(run)}, the baseline at {size(base)}"
        )
    return {arm: "; ".join(items) for arm, items in out.items()}


def power_by_task(comparisons: pd.DataFrame) -> pd.DataFrame:
    """Per task and metric: items compared and the range of the minimum detectable difference."""
    ok = comparisons[comparisons["verdict"] != "missing"]
    if ok.empty:
        return pd.DataFrame(columns=["task", "metric", "n", "mdd_min", "mdd_median", "mdd_max"])
    return (
        ok.groupby(["task", "metric"], sort=False)
        .agg(
            n=("n", "max"),
            mdd_min=("mdd", "min"),
            mdd_median=("mdd", "median"),
            mdd_max=("mdd", "max"),
        )
        .reset_index()
    )


def missing_reasons(missing: Iterable[Mapping[str, Any]]) -> dict[Any, str]:
    """Why outputs are absent, from the rule's list: {arm: reason} for an arm not built,
    {(arm, task): reason} for an evaluation, {("benchmark", arm): reason} for a benchmark."""
    out: dict[Any, str] = {}
    for m in missing:
        if m.get("stage") == "benchmark":
            out[("benchmark", m["arm"])] = m["reason"]
        elif m.get("task"):
            out[(m["arm"], m["task"])] = m["reason"]
        else:
            out[m["arm"]] = m["reason"]
    return out


def run(
    samples_files: Sequence[Path | str],
    eval_files: Sequence[Path | str],
    model_dirs: Sequence[Path | str],
    bench_files: Sequence[Path | str],
    arms: Mapping[str, Mapping[str, Any]],
    tasks: Sequence[str],
    baseline: str,
    analysis: Mapping[str, Any],
    study: str,
    out: Mapping[str, Path | str],
) -> stats.Recommendation:
    """The compare stage: read every output, write scores, comparisons, decision and summaries.

    Failed jobs' failure records (quantstudy.records) are shown as missing, with their reason.
    ``out`` names the files: scores, comparisons, decision (CSV), decision_html, summary (RST
    for the report's front page) and summary_md.
    """
    missing = failed_jobs(model_dirs, eval_files, bench_files)
    samples = load_samples(samples_files)
    evals = records.successes(eval_files)
    scores, comparisons = analyse(samples, evals, baseline, list(arms), tasks, analysis)
    quant = load_quantize_records(model_dirs)
    benches = read_benchmarks(bench_files)
    speeds = {b["arm"]: decode_speed(b) for b in benches}
    primary = analysis.get("primary_metrics") or {}
    decision, rec = decision_table(
        comparisons,
        arms,
        baseline,
        tasks,
        quant,
        speeds,
        missing_reasons(missing),
        analysis.get("recommend", "smallest-equivalent"),
        primary,
        batch_caveats(evals, baseline),
    )
    power = power_by_task(deciding_rows(comparisons, primary))
    scores.to_csv(out["scores"], index=False)
    comparisons.to_csv(out["comparisons"], index=False)
    decision.to_csv(out["decision"], index=False)
    outputs = report.study_outputs(None, None, quant, evals, benches)
    warning = mixed_code_warning(code_versions(outputs))
    summary = ([warning] if warning else []) + report.summary_sentences(
        decision, rec, power, analysis, baseline
    )
    Path(out["decision_html"]).write_text(
        report.decision_html(decision, comparisons, scores, summary, study)
    )
    Path(out["summary"]).write_text(report.summary_rst(decision, rec, power, analysis, baseline))
    Path(out["summary_md"]).write_text(
        report.summary_markdown(decision, rec, power, analysis, baseline, study)
    )
    return rec
