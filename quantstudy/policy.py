"""Decision policy: from verdicts, memory and speed to one row per arm and the recommended arm.

The statistics (quantstudy.stats) give a verdict per arm, task and metric; this module decides
what they mean for a user choosing an arm: which metric decides a task, an arm's verdict per
task, its worst significant loss, its speed and memory against the baseline, the caveats that
weaken a comparison, and the arm a rule of the config's `analysis.recommend` picks. compare.py
reads the study and calls it; report.py shows the result.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from .memory import fmt_bytes
from .report import VERDICT_PREFIX

RULES = ("smallest-equivalent", "smallest-not-worse", "fastest-equivalent")
"""Decision rules understood by :func:`recommend`."""

DECISION_COLUMNS = [
    "arm", "method", "bits", "role", "status", "caveat", "memory_bytes", "memory_vs_baseline",
    "disk_bytes", "speed_vs_baseline", "speed_measure", "worst_loss", "worst_loss_diff",
    "worst_loss_task", "worst_loss_metric", "recommended",
]  # fmt: skip
"""Columns of the decision table before its one verdict column per task (``verdict:<task>``)."""

SPEED_MODES = ("static", "eager")
"""Execution modes whose batch-1 decode speed is the decision's speed, first supported wins."""


@dataclass(frozen=True)
class DecisionRow:
    """One arm as :func:`recommend` sees it: its footprint, speed and verdict per task."""

    arm: str
    memory_bytes: float
    speed_ratio: float = math.nan  # arm throughput / baseline throughput; NaN when unmeasured
    verdicts: Mapping[str, str] = field(default_factory=dict)


REQUIREMENTS = ("equivalent", "not-worse")
"""What a task family (`analysis.families`) can require of an arm on each of its tasks."""

_OK_LABELS = {
    "equivalent": frozenset({"equivalent", "better"}),
    "not-worse": frozenset({"equivalent", "better", "inconclusive"}),
}


@dataclass(frozen=True)
class Condition:
    """Where the workload has no task of a family, `arm` is the one to take (None: no arm
    qualifies there either); `finding` is that arm's evidence on the family's tasks, which keeps
    it from being the arm for every workload."""

    family: str
    tasks: tuple[str, ...]
    arm: str | None
    finding: str


@dataclass(frozen=True)
class Recommendation:
    """The arm chosen by a decision rule (None when no arm qualifies) and why; with task
    families, the other arms each workload without a family's tasks could take."""

    arm: str | None
    rule: str
    reason: str
    candidates: tuple[str, ...] = ()
    conditions: tuple[Condition, ...] = ()


# --------------------------------------------------------------------------- speed


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
        if res.get("builds"):  # fused projections, compile mode chosen per model
            measure += "; each model's step built its fastest way (step_build, benchmark table)"
        if bench.get("is_baseline"):
            return Speed(1.0, measure)
        arm_ms = ((decode.get("arm") or {}).get("ms_per_token") or {}).get("median")
        base_ms = ((decode.get("baseline") or {}).get("ms_per_token") or {}).get("median")
        if arm_ms and base_ms and not (decode.get("arm") or {}).get("oom"):
            return Speed(float(base_ms) / float(arm_ms), measure)
    return Speed(math.nan, "not measured")


# --------------------------------------------------------------------------- verdicts per task


_SEVERITY = ("missing", "worse", "inconclusive", "equivalent", "better")


def task_verdicts(
    comparisons: pd.DataFrame, metrics: Mapping[str, str] | None = None
) -> dict[str, dict[str, str]]:
    """Verdicts per arm and task from a comparisons table: {arm: {task: verdict}}.

    When ``metrics`` names a task's primary metric only that metric counts; otherwise a task's
    metrics are combined conservatively: the worst of missing < worse < inconclusive <
    equivalent < better, except that "better" on one metric and "equivalent" on another give
    "equivalent".
    """
    out: dict[str, dict[str, str]] = {}
    for (arm, task), rows in comparisons.groupby(["arm", "task"], sort=False):
        if metrics and task in metrics:
            rows = rows[rows["metric"] == metrics[task]]
        labels = set(rows["verdict"]) or {"missing"}
        worst = min(labels, key=_SEVERITY.index)
        out.setdefault(str(arm), {})[str(task)] = worst
    return out


def _as_decision_rows(rows: Any) -> list[DecisionRow]:
    """DecisionRows from DecisionRows, mappings or a DataFrame (verdicts column or one per task)."""
    if isinstance(rows, pd.DataFrame):
        rows = rows.to_dict("records")
    out = []
    for r in rows:
        if isinstance(r, DecisionRow):
            out.append(r)
            continue
        r = dict(r)
        verdicts = r.pop("verdicts", None)
        arm = str(r.pop("arm"))
        memory = r.pop("memory_bytes", math.nan)
        speed = r.pop("speed_ratio", math.nan)
        if verdicts is None:
            verdicts = {k: v for k, v in r.items() if isinstance(v, str)}
        out.append(
            DecisionRow(
                arm,
                math.nan if memory is None else float(memory),
                math.nan if speed is None else float(speed),
                dict(verdicts),
            )
        )
    return out


def recommend(
    decision_rows: Any, rule: str, requirements: Mapping[str, str] | None = None
) -> Recommendation:
    """The arm a decision rule picks from per-arm memory, speed and verdicts, with the reason.

    ``decision_rows``: DecisionRows, mappings with keys arm, memory_bytes, speed_ratio and
    verdicts ({task: verdict}), or a DataFrame of those (or with one verdict column per task).
    Rules (RULES):

    * ``smallest-equivalent``: smallest memory among arms "equivalent" or "better" on every task;
    * ``smallest-not-worse``: smallest memory among arms with no "worse" verdict;
    * ``fastest-equivalent``: highest speed_ratio among arms "equivalent" or "better" everywhere.

    Every rule judges each arm on all tasks that appear in any row; a task an arm has no verdict
    for counts as "missing", and "missing" disqualifies (no evidence is not evidence of no
    harm). Rows with no verdicts at all (the baseline) are not candidates. Ties break on the other
    criterion (speed, resp. memory), then arm name. Arms with NaN memory (resp. speed) cannot win
    a smallest (resp. fastest) rule.

    ``requirements`` ({task: "equivalent" | "not-worse"}, from a task family) replaces the rule's
    requirement on the tasks it names: "equivalent" takes equivalent or better, "not-worse" any
    verdict but worse and missing.
    """
    if rule not in RULES:
        raise ValueError(f"unknown decision rule {rule!r}; known rules: {', '.join(RULES)}")
    rows = [r for r in _as_decision_rows(decision_rows) if r.verdicts]
    if not rows:
        return Recommendation(None, rule, "no arm has verdicts to decide on")
    all_tasks = sorted({t for r in rows for t in r.verdicts})
    default = "not-worse" if rule == "smallest-not-worse" else "equivalent"
    need = "equivalent or better" if rule != "smallest-not-worse" else "not worse (and not missing)"
    requirements = dict(requirements or {})
    for task, req in requirements.items():
        if req not in REQUIREMENTS:
            raise ValueError(f"task {task!r}: unknown requirement {req!r}; known: {REQUIREMENTS}")
    if any(requirements.get(t, default) != default for t in all_tasks):
        need += " (or as its family requires)"
    ok_labels = {t: _OK_LABELS[requirements.get(t, default)] for t in all_tasks}

    def failures(r: DecisionRow) -> list[str]:
        return [
            f"{r.verdicts.get(t, 'missing')} on {t}"
            for t in all_tasks
            if r.verdicts.get(t, "missing") not in ok_labels[t]
        ]

    eligible = [r for r in rows if not failures(r)]
    if not eligible:
        why = "; ".join(f"{r.arm}: {', '.join(failures(r))}" for r in rows)
        return Recommendation(None, rule, f"no arm is {need} on all {len(all_tasks)} tasks ({why})")
    if rule == "fastest-equivalent":
        ranked = [r for r in eligible if not math.isnan(r.speed_ratio)]
        if not ranked:
            return Recommendation(
                None,
                rule,
                f"arms {need} on every task ({', '.join(r.arm for r in eligible)}) "
                "have no measured speed_ratio",
                tuple(r.arm for r in eligible),
            )
        best = min(
            ranked,
            key=lambda r: (
                -r.speed_ratio,
                r.memory_bytes if not math.isnan(r.memory_bytes) else math.inf,
                r.arm,
            ),
        )
        reason = (
            f"{best.arm}: fastest (speed ratio {best.speed_ratio:.2f}) of {len(eligible)} "
            f"arm(s) {need} on all {len(all_tasks)} tasks"
        )
    else:
        ranked = [r for r in eligible if not math.isnan(r.memory_bytes)]
        if not ranked:
            return Recommendation(
                None,
                rule,
                f"arms {need} on every task ({', '.join(r.arm for r in eligible)}) "
                "have no memory_bytes",
                tuple(r.arm for r in eligible),
            )
        best = min(
            ranked,
            key=lambda r: (
                r.memory_bytes,
                -r.speed_ratio if not math.isnan(r.speed_ratio) else math.inf,
                r.arm,
            ),
        )
        reason = (
            f"{best.arm}: smallest memory ({fmt_bytes(best.memory_bytes)}) of "
            f"{len(eligible)} arm(s) {need} on all {len(all_tasks)} tasks"
        )
    return Recommendation(best.arm, rule, reason, tuple(r.arm for r in eligible))


def _finding(deciding: pd.DataFrame, arm: str, tasks: Sequence[str], requirement: str) -> str:
    """An arm's evidence on a family's tasks where it falls short of the requirement: each
    failing (task, metric) with its difference, CI and Holm p; "missing on T" without data."""
    rows = deciding[(deciding["arm"] == arm) & deciding["task"].isin(tasks)]
    ok = _OK_LABELS[requirement]
    parts = []
    for task in tasks:
        mine = rows[rows["task"] == task]
        bad = mine[~mine["verdict"].isin(ok)]
        if mine.empty:
            parts.append(f"missing on {task}")
        for r in bad.sort_values("diff").to_dict("records"):
            if r["verdict"] == "missing":
                parts.append(f"missing on {task} {r['metric']}")
                continue
            parts.append(
                f"{r['verdict']} on {task} {r['metric']}: {r['diff']:+.3f} "
                f"(95% CI {r['diff_ci_low']:+.3f} to {r['diff_ci_high']:+.3f}, "
                f"Holm p = {r['p_holm']:.2g})"
            )
    return "; ".join(parts) or f"meets '{requirement}' on its tasks"


def recommend_by_family(
    decision_rows: Sequence[DecisionRow],
    rule: str,
    families: Mapping[str, Any],
    deciding: pd.DataFrame,
) -> Recommendation:
    """:func:`recommend` with task families (`analysis.families`: {name: {tasks, require}}).

    The arm recommended for every workload meets each family's requirement on its tasks and
    the rule's on the others. Then, family by family, the rule is applied again without that
    family's tasks: where it picks another arm, the recommendation carries a
    :class:`Condition` ("nf4 only where no extraction task") with that arm's finding on the
    family's tasks (``deciding``: the comparisons rows that decide verdicts).
    """

    def field(spec: Any, key: str, default: Any = None) -> Any:
        return spec.get(key, default) if isinstance(spec, Mapping) else getattr(spec, key)

    requirements = {
        t: field(spec, "require", "not-worse")
        for spec in families.values()
        for t in field(spec, "tasks")
    }
    main = recommend(decision_rows, rule, requirements)
    conditions = []
    for name, spec in families.items():
        tasks = tuple(field(spec, "tasks"))
        rest = [
            DecisionRow(
                r.arm,
                r.memory_bytes,
                r.speed_ratio,
                {t: v for t, v in r.verdicts.items() if t not in tasks},
            )  # fmt: skip
            for r in decision_rows
        ]
        other = recommend(rest, rule, {t: v for t, v in requirements.items() if t not in tasks})
        if other.arm is None or other.arm == main.arm:
            continue
        finding = _finding(deciding, other.arm, tasks, requirements[tasks[0]])
        conditions.append(Condition(name, tasks, other.arm, finding))
    return Recommendation(main.arm, rule, main.reason, main.candidates, tuple(conditions))


# --------------------------------------------------------------------------- the table


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
    faithfulness: Mapping[str, Mapping[str, Any]] | None = None,
    families: Mapping[str, Any] | None = None,
) -> tuple[pd.DataFrame, Recommendation]:
    """One row per configured arm: memory, speed, verdict per task, worst loss, recommendation.

    ``arms`` is the config's arms (every one gets a row, in config order); ``quant`` the
    quantize.json of the arms that were built; ``speeds`` the decode speed of the benchmarked
    ones; ``missing`` says why outputs are absent ({arm: reason} for an arm that was not built,
    {(arm, task): reason} for an evaluation that did not run); ``caveats`` what weakens an arm's
    comparison without removing it (see :func:`batch_caveats`). The recommendation
    is :func:`recommend` under ``rule`` over the non-baseline arms. ``faithfulness`` (the
    study measured agreement with the baseline: {arm: its faithfulness record}) adds the
    FAITHFULNESS_COLUMNS after the verdicts (NaN for an arm without a record); it informs the
    reader and does not enter the rule.
    With ``families`` (`analysis.families`) the recommendation is
    :func:`recommend_by_family`.
    """
    deciding = deciding_rows(comparisons, primary)
    verdicts = task_verdicts(deciding, primary)
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
            "method": rec["method"] if rec else spec["method"],
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
            decision_rows.append(DecisionRow(arm, memory, speed.ratio, arm_verdicts))
    if families:
        recommendation = recommend_by_family(decision_rows, rule, families, deciding)
    else:
        recommendation = recommend(decision_rows, rule)
    table = pd.DataFrame(rows, columns=DECISION_COLUMNS + [f"{VERDICT_PREFIX}{t}" for t in tasks])
    table["recommended"] = table["arm"] == recommendation.arm
    if faithfulness is not None:
        for column in FAITHFULNESS_COLUMNS:
            table[column] = [_measured(faithfulness.get(a), column) for a in table["arm"]]
    return table, recommendation


FAITHFULNESS_COLUMNS = ["kl_mean", "kl_se", "top1_agreement", "ppl_ratio"]
"""Decision-table columns of a study that measured agreement with the baseline (issue 17):
mean KL(baseline ‖ arm) per token with its standard error, top-1 agreement, perplexity ratio."""


def _measured(record: Mapping[str, Any] | None, key: str) -> float:
    """A number of an arm's faithfulness record; NaN for none or a failure record."""
    if not record or record.get("status") == "failed" or record.get(key) is None:
        return math.nan
    return float(record[key])


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
