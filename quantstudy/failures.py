"""How an arm fails, not only whether: each arm against the baseline, item by item.

From the samples files (`eval/{arm}/{task}.samples.jsonl`) the failure-mode analysis finds, per
arm, task and metric:

* flips: the items the arm scores below the baseline ("lost": for a 0/1 metric, baseline right
  and arm wrong) and above it ("gained"), with a few examples of each (prompt, target, both
  answers), the largest changes first;
* for an extraction task (quantstudy.extraction): precision and recall apart, the parse rate,
  and the sentences with no gold entity: how often the arm returns [] there and how many false
  positives it adds (over-extraction shows there first);
* for a task with subjects (MMLU): the paired difference per subject, tested within the subject
  (McNemar for 0/1 scores, else the sign-flip permutation test), Holm-adjusted across the
  task's subjects, and the subjects that carry the loss.

The statistics are quantstudy.stats'; this module arranges them and writes the tables and the
report's page (`report/failures.html`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import stats
from .compare import arm_task_of, read_records, sample_rows
from .extraction import COUNTS, pooled

FLIP_COLUMNS = ["arm", "task", "metric", "n", "lost", "gained", "unchanged", "diff"]
EXAMPLE_COLUMNS = ["arm", "task", "metric", "direction", "subject", "doc_id", "baseline_score",
                   "arm_score", "prompt", "target", "baseline_answer", "arm_answer"]  # fmt: skip
EXTRACTION_COLUMNS = [
    "arm", "task", "n", "tp", "fp", "fn", "precision", "recall", "micro_f1", "macro_f1",
    "parse_rate", "precision_diff", "recall_diff", "n_empty_gold", "empty_returned",
    "empty_returned_rate", "empty_returned_ci_low", "empty_returned_ci_high", "fp_on_empty",
]  # fmt: skip
SUBJECT_COLUMNS = ["arm", "task", "metric", "subject", "n", "baseline_mean", "arm_mean", "diff",
                   "test", "p", "p_holm", "carries_loss"]  # fmt: skip

PROMPT_CHARS = 600
"""An example's prompt is shown by its last this many characters (few-shot prefixes are long)."""


# --------------------------------------------------------------------------- reading


def answer_text(response: Any) -> str:
    """A record's answer in words: the generated text; for multiple choice, the chosen option
    (the one with the highest log-likelihood) as "choice k"."""
    if isinstance(response, Mapping):
        response = response.get("none", next(iter(response.values()), None))
    if isinstance(response, list) and response and all(isinstance(r, str) for r in response):
        return response[0]
    if isinstance(response, list) and response and all(isinstance(r, list) for r in response):
        flat = [r[0] if r and isinstance(r[0], list) else r for r in response]
        scores = [float(r[0]) for r in flat if r and isinstance(r[0], int | float)]
        if len(scores) == len(flat):
            return f"choice {int(np.argmax(scores))}"
    return json.dumps(response)[:200]


def read_samples(samples_files: Sequence[Path | str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(scores, texts) of the samples files: the long table of per-example scores (as
    quantstudy.compare reads it) and per (arm, task, subject, doc_id) the prompt, target and
    answer. An empty file (a failed job's) adds nothing."""
    rows: list[dict] = []
    texts: list[dict] = []
    for path in samples_files:
        arm, task = arm_task_of(path)
        records = read_records(path)
        rows += sample_rows(records, arm, task, path)
        for rec in records:
            own = rec.get("task") or task
            texts.append(
                {
                    "arm": arm,
                    "task": task,
                    "subject": own if own != task else None,
                    "doc_id": rec["doc_id"],
                    "prompt": rec.get("prompt"),
                    "target": rec.get("target"),
                    "answer": answer_text(rec.get("response")),
                }
            )
    columns = ["task", "doc_id", "doc_hash", "arm", "metric", "value", "subject"]
    text_columns = ["arm", "task", "subject", "doc_id", "prompt", "target", "answer"]
    return pd.DataFrame(rows, columns=columns), pd.DataFrame(texts, columns=text_columns)


# --------------------------------------------------------------------------- flips


def _per_item_metrics(task_rows: pd.DataFrame) -> list[str]:
    """The metrics of a task that score items one by one (an extraction task's counts are
    pooled, not compared item by item)."""
    metrics = sorted(task_rows["metric"].unique())
    if stats.extraction_counts(task_rows):
        metrics = [m for m in metrics if m not in COUNTS]
    return metrics


def example_metric(task: str, metrics: Sequence[str], primary: Mapping[str, str]) -> str | None:
    """The metric whose flips the examples show: the task's primary metric where it scores items
    one by one, else the per-sentence F1 of an extraction task, else the first metric."""
    if primary.get(task) in metrics:
        return primary[task]
    if "f1" in metrics:
        return "f1"
    return metrics[0] if metrics else None


def _key(subject: Any, doc_id: Any) -> tuple[Any, Any]:
    return (None if subject is None or (isinstance(subject, float) and math.isnan(subject))
            else subject, doc_id)  # fmt: skip


def flips(
    scores: pd.DataFrame,
    texts: pd.DataFrame,
    baseline: str,
    arms: Sequence[str],
    tasks: Sequence[str],
    primary: Mapping[str, str] | None = None,
    n_examples: int = 3,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(flips, examples): per arm, task and per-item metric, the items scored lower than the
    baseline (lost), higher (gained) and alike; and up to ``n_examples`` items each way for the
    task's example metric (:func:`example_metric`), the largest changes first, then by item."""
    flip_rows, example_rows = [], []
    text_of = {
        (r["arm"], r["task"], *_key(r["subject"], r["doc_id"])): r for r in texts.to_dict("records")
    }
    for task in tasks:
        task_rows = scores[scores["task"] == task]
        metrics = _per_item_metrics(task_rows)
        shown = example_metric(task, metrics, primary or {})
        present = set(task_rows["arm"])
        for arm in arms:
            if arm == baseline or arm not in present or baseline not in present:
                continue
            for metric in metrics:
                frame = stats.paired_frame(task_rows, task, metric, arm, baseline)
                d = frame["arm"] - frame["baseline"]
                flip_rows.append(
                    {
                        "arm": arm,
                        "task": task,
                        "metric": metric,
                        "n": len(frame),
                        "lost": int((d < 0).sum()),
                        "gained": int((d > 0).sum()),
                        "unchanged": int((d == 0).sum()),
                        "diff": float(d.mean()),
                    }  # fmt: skip
                )
                if metric != shown:
                    continue
                frame = frame.assign(change=d)
                for direction, sel in (("lost", d < 0), ("gained", d > 0)):
                    part = frame[sel.to_numpy()].sort_values(
                        ["change", "subject", "doc_id"], ascending=[direction == "lost", True, True],
                        key=lambda c: c.astype(str) if c.dtype == object else c,
                    )  # fmt: skip
                    for r in part.head(n_examples).to_dict("records"):
                        key = _key(r["subject"], r["doc_id"])
                        base_text = text_of.get((baseline, task, *key), {})
                        arm_text = text_of.get((arm, task, *key), {})
                        prompt = base_text.get("prompt")
                        example_rows.append(
                            {
                                "arm": arm,
                                "task": task,
                                "metric": metric,
                                "direction": direction,
                                "subject": r["subject"],
                                "doc_id": r["doc_id"],
                                "baseline_score": r["baseline"],
                                "arm_score": r["arm"],
                                "prompt": prompt[-PROMPT_CHARS:]
                                if isinstance(prompt, str)
                                else None,
                                "target": base_text.get("target"),
                                "baseline_answer": base_text.get("answer"),
                                "arm_answer": arm_text.get("answer"),
                            }  # fmt: skip
                        )
    return (
        pd.DataFrame(flip_rows, columns=FLIP_COLUMNS),
        pd.DataFrame(example_rows, columns=EXAMPLE_COLUMNS),
    )


# --------------------------------------------------------------------------- extraction


def _counts_by_item(task_rows: pd.DataFrame, arm: str) -> pd.DataFrame:
    """One arm's per-item tp, fp, fn and parsed/f1 where scored, one row per item."""
    sel = task_rows[task_rows["arm"] == arm].copy()
    sel["subject"] = sel["subject"].astype(object).where(sel["subject"].notna(), "")
    return sel.pivot_table(
        index=["subject", "doc_id"], columns="metric", values="value", aggfunc="first"
    )


def extraction_table(
    scores: pd.DataFrame, baseline: str, arms: Sequence[str], tasks: Sequence[str],
    alpha: float = 0.05,
) -> pd.DataFrame:  # fmt: skip
    """Per arm (the baseline first) and extraction task: pooled TP/FP/FN, precision, recall,
    micro- and macro-F1, parse rate, precision and recall minus the baseline's, and on the
    sentences with no gold entity (tp + fn = 0, the same for every arm): how many the arm
    answers with [] (a well-formed empty list) with a Wilson interval, and its false positives
    there. Pooled metrics are NaN where undefined (no entity at all)."""
    out = []
    for task in tasks:
        task_rows = scores[scores["task"] == task]
        if task_rows.empty or not stats.extraction_counts(task_rows):
            continue
        present = set(task_rows["arm"])
        base = None
        for arm in [baseline, *[a for a in arms if a != baseline]]:
            if arm not in present:
                continue
            items = _counts_by_item(task_rows, arm)
            tp, fp, fn = (float(items[c].sum()) for c in COUNTS)
            metrics = pooled(tp, fp, fn)
            empty = (items["tp"] + items["fn"]) == 0
            parsed = items["parsed"] if "parsed" in items else pd.Series(1.0, index=items.index)
            returned = empty & (parsed == 1) & ((items["tp"] + items["fp"]) == 0)
            k, m = int(returned.sum()), int(empty.sum())
            low, high = stats.wilson_ci(k, m, alpha) if m else (math.nan, math.nan)
            row = {
                "arm": arm, "task": task, "n": len(items), "tp": tp, "fp": fp, "fn": fn,
                "precision": metrics["precision"], "recall": metrics["recall"],
                "micro_f1": metrics["micro_f1"],
                "macro_f1": float(items["f1"].mean()) if "f1" in items else math.nan,
                "parse_rate": float(parsed.mean()),
                "n_empty_gold": m, "empty_returned": k,
                "empty_returned_rate": k / m if m else math.nan,
                "empty_returned_ci_low": low, "empty_returned_ci_high": high,
                "fp_on_empty": float(items.loc[empty, "fp"].sum()),
            }  # fmt: skip
            if arm == baseline:
                base = row
            row["precision_diff"] = row["precision"] - base["precision"] if base else math.nan
            row["recall_diff"] = row["recall"] - base["recall"] if base else math.nan
            out.append(row)
    return pd.DataFrame(out, columns=EXTRACTION_COLUMNS)


# --------------------------------------------------------------------------- subjects


def subject_table(
    scores: pd.DataFrame,
    baseline: str,
    arms: Sequence[str],
    tasks: Sequence[str],
    primary: Mapping[str, str] | None = None,
    alpha: float = 0.05,
    n_perm: int = 10_000,
    seed: int = 0,
) -> pd.DataFrame:
    """Per arm, task with subjects (at least two) and its example metric: each subject's paired
    difference, tested within the subject (McNemar for 0/1 scores, else the sign-flip
    permutation test) and Holm-adjusted across the task's subjects. ``carries_loss`` marks the
    subjects with a significant loss (Holm p < alpha, difference below 0 on a metric where
    higher is better)."""
    out = []
    for task in tasks:
        task_rows = scores[scores["task"] == task]
        if task_rows["subject"].dropna().nunique() < 2:
            continue
        metric = example_metric(task, _per_item_metrics(task_rows), primary or {})
        rows = task_rows[task_rows["metric"] == metric]
        binary = stats.is_binary(rows["value"])
        present = set(rows["arm"])
        for arm in arms:
            if arm == baseline or arm not in present or baseline not in present:
                continue
            frame = stats.paired_frame(rows, task, metric, arm, baseline)
            family = []
            for subject, part in frame.groupby("subject", sort=True, dropna=False):
                a, b = part["baseline"].to_numpy(), part["arm"].to_numpy()
                if binary:
                    res = stats.mcnemar_test(a, b)
                    test, p = res.method, res.pvalue
                else:
                    sub_seed = stats._subseed(seed, "subject", arm, task, metric, subject)
                    res = stats.paired_permutation_test(a, b, n_perm, sub_seed)
                    test, p = f"permutation-{res.method}", res.pvalue
                family.append(
                    {
                        "arm": arm,
                        "task": task,
                        "metric": metric,
                        "subject": subject,
                        "n": len(part),
                        "baseline_mean": float(a.mean()),
                        "arm_mean": float(b.mean()),
                        "diff": float((b - a).mean()),
                        "test": test,
                        "p": p,
                    }  # fmt: skip
                )
            for r, p_adj in zip(family, stats.holm([r["p"] for r in family]), strict=True):
                r["p_holm"] = float(p_adj)
                r["carries_loss"] = bool(r["diff"] < 0 and p_adj < alpha)
            out += family
    return pd.DataFrame(out, columns=SUBJECT_COLUMNS)


# --------------------------------------------------------------------------- the stage


def run(
    samples_files: Sequence[Path | str],
    arms: Sequence[str],
    tasks: Sequence[str],
    baseline: str,
    analysis: Any,
    study: str,
    out: Mapping[str, Path | str],
) -> None:
    """The failure-mode analysis of a study: writes out["flips"], out["examples"],
    out["extraction"], out["subjects"] (CSV) and the report's page out["failures_html"]."""
    from .report import failures_html

    scores, texts = read_samples(samples_files)
    primary = dict(analysis.primary_metrics)
    flip_table, examples = flips(scores, texts, baseline, arms, tasks, primary)
    extraction = extraction_table(scores, baseline, arms, tasks, analysis.alpha)
    subjects = subject_table(
        scores, baseline, arms, tasks, primary, analysis.alpha, seed=analysis.seed
    )
    flip_table.to_csv(out["flips"], index=False)
    examples.to_csv(out["examples"], index=False)
    extraction.to_csv(out["extraction"], index=False)
    subjects.to_csv(out["subjects"], index=False)
    Path(out["failures_html"]).write_text(
        failures_html(flip_table, examples, extraction, subjects, baseline, study, analysis.alpha)
    )
