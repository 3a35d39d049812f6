"""The analysis stage: per-example records into paired statistics and a decision table per arm.

Inputs are the jobs' own files (`eval/{arm}/{task}.samples.jsonl` and `.json`,
`models/{arm}/quantize.json`, `bench/{arm}.json`), read for the arms and tasks that have them;
every configured arm and task still gets its rows, marked "missing" where its outputs are absent.
The statistics are :func:`quantstudy.stats.compare`, the decision :mod:`quantstudy.policy`, the
pages :mod:`quantstudy.report`; this module reads the study and hands it on.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from . import policy, records, report, stats
from .aggregate import load_quantize_records
from .benchmark.record import read_many as read_benchmarks
from .provenance import code_versions, mixed_code_warning
from .study import Analysis

SAMPLES_SUFFIX = ".samples.jsonl"


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


def read_records(path: Path | str) -> list[dict[str, Any]]:
    """The records of a samples file, one JSON object a line (an empty file has none); a line
    that is not JSON is an error naming the file and the line."""
    out = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}, line {number}: not a JSON record ({e})") from None
    return out


def load_samples(samples_files: Iterable[Path | str]) -> pd.DataFrame:
    """The long table of per-example scores from `eval/{arm}/{task}.samples.jsonl` files."""
    rows: list[dict] = []
    for path in samples_files:
        arm, task = arm_task_of(path)
        rows += sample_rows(read_records(path), arm, task, path)
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


# --------------------------------------------------------------------------- the analysis


def metric_directions(
    samples: pd.DataFrame, eval_jsons: Iterable[Mapping[str, Any]]
) -> dict[tuple[str, str], bool]:
    """{(task, metric as the samples name it): higher is better} for every metric scored."""
    hib = higher_is_better(eval_jsons)
    pairs = samples[["task", "metric"]].drop_duplicates().itertuples(index=False)
    return {(t, m): hib.get((t, _base_metric(m)), True) for t, m in pairs}


def analyse(
    samples: pd.DataFrame,
    eval_jsons: Sequence[Mapping[str, Any]],
    baseline: str,
    arms: Sequence[str],
    tasks: Sequence[str],
    analysis: Analysis,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(scores, comparisons) of every configured arm and task, verdicts by each metric's
    direction (lm-eval's higher_is_better). ``analysis`` is the config's `analysis` section."""
    return stats.compare(
        samples,
        baseline,
        margin=analysis.margin,
        alpha=analysis.alpha,
        n_boot=analysis.n_boot,
        seed=analysis.seed,
        arms=list(arms),
        tasks=list(tasks),
        higher_is_better=metric_directions(samples, eval_jsons),
    )


def run(
    samples_files: Sequence[Path | str],
    eval_files: Sequence[Path | str],
    model_dirs: Sequence[Path | str],
    bench_files: Sequence[Path | str],
    arms: Mapping[str, Mapping[str, Any]],
    tasks: Sequence[str],
    baseline: str,
    analysis: Analysis,
    study: str,
    out: Mapping[str, Path | str],
    faithfulness_files: Sequence[Path | str] | None = None,
) -> policy.Recommendation:
    """The compare stage: read every output, write scores, comparisons, decision and summaries.

    Failed jobs' failure records (quantstudy.records) are shown as missing, with their reason.
    ``out`` names the files: scores, comparisons, decision (CSV), decision_html, summary (RST
    for the report's front page) and summary_md. ``faithfulness_files`` (a study that measured
    agreement with the baseline: every arm's `faithfulness/arms/{arm}.json`) add its KL,
    agreement and perplexity-ratio columns to the decision table.
    """
    from .faithfulness import by_arm

    missing = failed_jobs(model_dirs, eval_files, bench_files)
    samples = load_samples(samples_files)
    evals = records.successes(eval_files)
    scores, comparisons = analyse(samples, evals, baseline, list(arms), tasks, analysis)
    quant = load_quantize_records(model_dirs)
    benches = read_benchmarks(bench_files)
    primary = analysis.primary_metrics
    decision, rec = policy.decision_table(
        comparisons,
        arms,
        baseline,
        tasks,
        quant,
        {b["arm"]: policy.decode_speed(b) for b in benches},
        policy.missing_reasons(missing),
        analysis.recommend,
        primary,
        policy.batch_caveats(evals, baseline),
        faithfulness=by_arm(faithfulness_files) if faithfulness_files else None,
        families=analysis.families,
    )
    power = policy.power_by_task(policy.deciding_rows(comparisons, primary))
    scores.to_csv(out["scores"], index=False)
    comparisons.to_csv(out["comparisons"], index=False)
    decision.to_csv(out["decision"], index=False)
    outputs = report.study_outputs(None, None, quant, evals, benches)
    report.write_decision_pages(
        out, decision, comparisons, scores, rec, power, analysis, baseline, study,
        mixed_code_warning(code_versions(outputs)),
    )  # fmt: skip
    return rec
