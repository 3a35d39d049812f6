"""plotnine figures of the study; each is saved as PNG and SVG with its data as CSV.

Every figure has a ``*_data`` function that builds the table it plots (tested on its own) and a
function that draws and saves it. Where a figure has nothing to show (no benchmark, no 4-bit
bitsandbytes arms) it is still written, as a panel that says why, so the report never silently
drops a section.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from plotnine import (
    aes,
    element_text,
    facet_grid,
    facet_wrap,
    geom_col,
    geom_errorbar,
    geom_hline,
    geom_line,
    geom_point,
    geom_step,
    geom_text,
    geom_tile,
    ggplot,
    labs,
    position_dodge,
    scale_color_manual,
    scale_fill_gradient2,
    scale_fill_manual,
    scale_shape_manual,
    scale_x_discrete,
    scale_x_log10,
    scale_y_log10,
    theme,
    theme_bw,
    theme_void,
)

from .arms import parse_arm

VERDICT_COLORS = {
    "baseline": "#334155",
    "equivalent": "#16a34a",
    "better": "#2563eb",
    "worse": "#dc2626",
    "inconclusive": "#d97706",
    "missing": "#94a3b8",
}
"""One colour per verdict, the same in every figure."""

ABLATION_FACTORS = ("quant_type", "double_quant", "compute_dtype")


def save(plot, data: pd.DataFrame, png: Path | str, width: float = 8, height: float = 5) -> None:
    """Write the figure as PNG and SVG beside it, and the data it shows as CSV."""
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    plot.save(png, width=width, height=height, dpi=150, verbose=False)
    plot.save(png.with_suffix(".svg"), width=width, height=height, verbose=False)
    data.to_csv(png.with_suffix(".csv"), index=False)


def empty_figure(message: str, png: Path | str, title: str = "") -> None:
    """A figure that only says why there is nothing to plot (its CSV holds the message)."""
    data = pd.DataFrame({"x": [0.0], "y": [0.0], "note": [message]})
    plot = (
        ggplot(data, aes("x", "y"))
        + geom_text(aes(label="note"), size=11)
        + labs(title=title)
        + theme_void()
        + theme(figure_size=(8, 2.5))
    )
    save(plot, data[["note"]], png, height=2.5)


def _panel(task: pd.Series, metric: pd.Series) -> pd.Series:
    """Facet labels "task: metric"."""
    return task.astype(str) + ": " + metric.astype(str)


def _panel_height(n_panels: int, per_row: int = 2, row_height: float = 3.2) -> float:
    """Figure height (inches) for n facet panels, per_row to a row."""
    return max(3.5, row_height * math.ceil(n_panels / per_row) + 1)


def verdict_of(scores: pd.DataFrame, comparisons: pd.DataFrame, baseline: str) -> pd.Series:
    """Each score row's verdict (the baseline's rows are "baseline")."""
    keyed = comparisons.set_index(["arm", "task", "metric"])["verdict"]
    out = []
    for arm, task, metric in zip(scores["arm"], scores["task"], scores["metric"], strict=True):
        out.append("baseline" if arm == baseline else keyed.get((arm, task, metric), "missing"))
    return pd.Series(out, index=scores.index)


# --------------------------------------------------------------------------- accuracy


def accuracy_data(
    scores: pd.DataFrame, comparisons: pd.DataFrame, baseline: str, arms: Sequence[str]
) -> pd.DataFrame:
    """One row per configured arm, task and metric: mean, 95% CI and verdict, arms in config
    order; an arm without a score on a task and metric has a row with verdict "missing" and NaN.
    """
    data = scores.copy()
    data["verdict"] = verdict_of(data, comparisons, baseline)
    panels = pd.concat([scores[["task", "metric"]], comparisons[["task", "metric"]].dropna()])
    have = set(zip(data["arm"], data["task"], data["metric"], strict=True))
    gaps = [
        {"arm": arm, "task": task, "metric": metric, "verdict": "missing"}
        for task, metric in panels.drop_duplicates().itertuples(index=False)
        for arm in arms
        if (arm, task, metric) not in have
    ]
    data = pd.concat([data, pd.DataFrame(gaps, columns=["arm", "task", "metric", "verdict"])])
    data["panel"] = _panel(data["task"], data["metric"])
    return _in_arm_order(data, arms)


def _in_arm_order(data: pd.DataFrame, arms: Sequence[str]) -> pd.DataFrame:
    """Rows sorted by task, metric and the arms' config order."""
    order = {a: i for i, a in enumerate(arms)}
    data = data.assign(_order=data["arm"].map(order))
    return (
        data.sort_values(["task", "metric", "_order"]).drop(columns="_order").reset_index(drop=True)
    )


def _missing_marks(gaps: pd.DataFrame, y: Mapping[str, float]):
    """A grey "missing" label where an arm has no value in a panel (at y[panel])."""
    marks = gaps.assign(y=gaps["panel"].map(y), label="missing")
    return geom_text(
        marks, aes("arm", "y", label="label"), color=VERDICT_COLORS["missing"], size=7, angle=90,
        inherit_aes=False,
    )  # fmt: skip


def accuracy(
    scores: pd.DataFrame,
    comparisons: pd.DataFrame,
    baseline: str,
    arms: Sequence[str],
    png: Path | str,
) -> None:
    """Score with its 95% CI per arm, one panel per task and metric, coloured by verdict; an arm
    without a score is labelled missing in its place."""
    data = accuracy_data(scores, comparisons, baseline, arms)
    if data["mean"].isna().all():
        empty_figure("No scores: no evaluation has finished.", png, "accuracy per task")
        return
    data["arm"] = pd.Categorical(data["arm"], categories=list(arms))
    shown, gaps = data[data["mean"].notna()], data[data["mean"].isna()]
    base = shown[shown["arm"] == baseline][["panel", "mean"]]
    middle = shown.groupby("panel", observed=True)["mean"].median().to_dict()
    plot = (
        ggplot(shown, aes("arm", "mean", color="verdict"))
        + geom_hline(base, aes(yintercept="mean"), linetype="dashed", color="#334155")
        + geom_errorbar(aes(ymin="ci_low", ymax="ci_high"), width=0.25)
        + geom_point(size=2.5)
        + facet_wrap("panel", scales="free_y", ncol=2)
        + scale_x_discrete(limits=list(arms))
        + scale_color_manual(values=VERDICT_COLORS, limits=list(VERDICT_COLORS))
        + labs(x="", y="score (95% CI)", color="verdict vs baseline")
        + theme_bw()
        + theme(axis_text_x=element_text(rotation=30, ha="right"))
    )
    if not gaps.empty:
        plot += _missing_marks(gaps, middle)
    save(plot, data, png, height=_panel_height(data["panel"].nunique()))


def relative_change_data(comparisons: pd.DataFrame, arms: Sequence[str]) -> pd.DataFrame:
    """Per arm, task and metric: change vs the baseline in % of its score, with the diff's CI
    (NaN for a comparison whose verdict is "missing")."""
    data = comparisons[comparisons["metric"].notna()].copy()
    base = data["baseline_mean"].where(data["baseline_mean"] != 0)
    data["change_pct"] = 100 * data["diff"] / base
    data["low_pct"] = 100 * data["diff_ci_low"] / base
    data["high_pct"] = 100 * data["diff_ci_high"] / base
    data["panel"] = _panel(data["task"], data["metric"])
    data["label"] = [f"{v:+.1f}%" if v == v else "missing" for v in data["change_pct"]]
    return _in_arm_order(data, arms)


def relative_change(comparisons: pd.DataFrame, arms: Sequence[str], png: Path | str) -> None:
    """Relative change vs the baseline per task (% of the baseline's score), bars with the CI;
    a comparison without data is labelled missing."""
    data = relative_change_data(comparisons, arms)
    if data["change_pct"].isna().all():
        empty_figure("No comparison with the baseline has data.", png, "relative change")
        return
    order = [a for a in arms if a in set(data["arm"])]
    data["arm"] = pd.Categorical(data["arm"], categories=order)
    shown, gaps = data[data["change_pct"].notna()], data[data["change_pct"].isna()]
    plot = (
        ggplot(shown, aes("arm", "change_pct", fill="verdict"))
        + geom_hline(yintercept=0, color="#334155")
        + geom_col(width=0.7)
        + geom_errorbar(aes(ymin="low_pct", ymax="high_pct"), width=0.25, color="#1e293b")
        + geom_text(
            shown[shown["change_pct"] >= 0], aes(y="high_pct", label="label"), va="bottom", size=7
        )
        + geom_text(
            shown[shown["change_pct"] < 0], aes(y="low_pct", label="label"), va="top", size=7
        )  # fmt: skip
        + facet_wrap("panel", scales="free_y", ncol=2)
        + scale_x_discrete(limits=order)
        + scale_fill_manual(values=VERDICT_COLORS, limits=list(VERDICT_COLORS))
        + labs(x="", y="change vs baseline (% of its score, 95% CI)", fill="verdict")
        + theme_bw()
        + theme(axis_text_x=element_text(rotation=30, ha="right"))
    )
    if not gaps.empty:
        plot += _missing_marks(gaps, dict.fromkeys(data["panel"], 0.0))
    save(plot, data, png, height=_panel_height(data["panel"].nunique()))


# --------------------------------------------------------------------------- ablation


def bnb4_factors(
    arms: Mapping[str, Mapping[str, Any]], quant: Mapping[str, Mapping[str, Any]]
) -> pd.DataFrame:
    """The 4-bit bitsandbytes arms and their quant_type, double_quant and compute_dtype.

    Read from each arm's quantize.json `parameters` (what was applied); an arm that was not
    built falls back to its typed config entry and is marked built = False.
    """
    rows = []
    for arm, spec in arms.items():
        rec = quant.get(arm)
        params = rec["parameters"] if rec else parse_arm(arm, spec).params()
        if params["method"] != "bnb-4bit":
            continue
        rows.append(
            {
                "arm": arm,
                "quant_type": str(params["quant_type"]),
                "double_quant": bool(params["double_quant"]),
                "compute_dtype": str(params["compute_dtype"]),
                "built": rec is not None,
            }
        )
    return pd.DataFrame(rows, columns=["arm", *ABLATION_FACTORS, "built"])


def ablation_data(
    scores: pd.DataFrame,
    comparisons: pd.DataFrame,
    factors: pd.DataFrame,
) -> pd.DataFrame:
    """The quant_type × double_quant × compute_dtype grid per task and metric.

    Every combination of the levels present is a cell: an arm's score, CI, difference from the
    baseline and verdict where it has one, "missing" for an arm that has no result, "no arm" for
    a combination the study did not configure.
    """
    panels = comparisons[["task", "metric"]].dropna().drop_duplicates()
    if factors.empty or panels.empty:
        return pd.DataFrame()
    levels = [sorted(factors[f].unique().tolist()) for f in ABLATION_FACTORS]
    score = scores.set_index(["arm", "task", "metric"])
    comp = comparisons.set_index(["arm", "task", "metric"])
    rows = []
    for task, metric in panels.itertuples(index=False):
        for qt, dq, cd in itertools.product(*levels):
            match = factors[
                (factors.quant_type == qt)
                & (factors.double_quant == dq)
                & (factors.compute_dtype == cd)
            ]
            cell = {"task": task, "metric": metric, "quant_type": qt,
                    "double_quant": "double quant" if dq else "no double quant",
                    "compute_dtype": f"compute {cd}"}  # fmt: skip
            if match.empty:
                rows.append(cell | {"arm": None, "state": "no arm", "label": "no arm"})
                continue
            for arm in match["arm"]:
                key = (arm, task, metric)
                if key in score.index and key in comp.index:
                    s, c = score.loc[key], comp.loc[key]
                    rows.append(
                        cell
                        | {
                            "arm": arm,
                            "state": c["verdict"],
                            "mean": s["mean"],
                            "ci_low": s["ci_low"],
                            "ci_high": s["ci_high"],
                            "diff": c["diff"],
                            "label": f"{arm}\n{s['mean']:.3f} ({c['diff']:+.3f})\n{c['verdict']}",
                        }
                    )
                else:
                    rows.append(cell | {"arm": arm, "state": "missing", "label": f"{arm}\nmissing"})
    data = pd.DataFrame(rows)
    data["panel"] = _panel(data["task"], data["metric"])
    return data


def ablation(
    scores: pd.DataFrame,
    comparisons: pd.DataFrame,
    factors: pd.DataFrame,
    png: Path | str,
) -> None:
    """NF4 vs FP4 × double quant × compute dtype: score and change vs baseline per cell."""
    data = ablation_data(scores, comparisons, factors)
    if data.empty:
        empty_figure(
            "The study has no 4-bit bitsandbytes arms (method bnb-4bit): no NF4/FP4 grid.",
            png,
            "NF4 vs FP4 × double quant × compute dtype",
        )
        return
    if "diff" not in data:
        data["diff"] = math.nan
    n_rows = data["panel"].nunique()
    plot = (
        ggplot(data, aes("quant_type", "double_quant"))
        + geom_tile(aes(fill="diff"), color="white", size=1)
        + geom_text(aes(label="label"), size=7)
        + facet_grid("panel ~ compute_dtype")
        + scale_fill_gradient2(
            low="#dc2626", mid="#f8fafc", high="#2563eb", midpoint=0, na_value="#ffffff"
        )
        + labs(x="4-bit data type", y="", fill="arm − baseline")
        + theme_bw()
        + theme(strip_text_y=element_text(size=7))
    )
    n_cols = data["compute_dtype"].nunique()
    save(plot, data, png, width=max(6, 3 * n_cols + 2), height=max(3, 2.2 * n_rows + 1))


# --------------------------------------------------------------------------- memory


def pareto_front(
    memory: Sequence[float], score: Sequence[float], higher_is_better: bool = True
) -> list[bool]:
    """Whether each point is on the Pareto front: no other point has less or equal memory and a
    score at least as good, with one of the two strictly better. NaN points are never on it."""
    pts = [(m, s if higher_is_better else -s) for m, s in zip(memory, score, strict=True)]
    out = []
    for i, (m, s) in enumerate(pts):
        if math.isnan(m) or math.isnan(s):
            out.append(False)
            continue
        dominated = any(
            j != i
            and not (math.isnan(m2) or math.isnan(s2))
            and m2 <= m
            and s2 >= s
            and (m2 < m or s2 > s)
            for j, (m2, s2) in enumerate(pts)
        )
        out.append(not dominated)
    return out


def point_labels(
    data: pd.DataFrame, x: str, y: str, tol_x: float = 0.15, tol_y: float = 0.04
) -> pd.DataFrame:
    """One label per group of points whose labels would print on top of each other, per panel.

    Points of a panel closer than ``tol_x`` of the panel's log10(x) range and ``tol_y`` of its
    y range (CIs included where the data has them) share one label, their arm names joined by
    commas; ``x`` is the group's right-most point and ``x_min`` its left-most.
    """
    rows = []
    for panel, group in data.groupby("panel", sort=False):
        lx = group[x].map(math.log10)
        span_x = max(float(lx.max() - lx.min()), 1e-12)
        low = group["ci_low"].min() if "ci_low" in group else group[y].min()
        high = group["ci_high"].max() if "ci_high" in group else group[y].max()
        span_y = max(float(high - low), 1e-12)
        placed: list[dict[str, Any]] = []
        for arm, gx, gy, vx in zip(group["arm"], lx, group[y], group[x], strict=True):
            for p in placed:
                if abs(p["lx"] - gx) <= tol_x * span_x and abs(p[y] - gy) <= tol_y * span_y:
                    p["label"] += f", {arm}"
                    p[x], p["x_min"] = max(p[x], vx), min(p["x_min"], vx)
                    break
            else:
                placed.append(
                    {"panel": panel, x: vx, "x_min": vx, y: gy, "lx": gx, "label": str(arm)}
                )
        rows += placed
    return pd.DataFrame(rows, columns=["panel", x, "x_min", y, "lx", "label"]).drop(columns="lx")


def memory_pareto_data(
    scores: pd.DataFrame,
    comparisons: pd.DataFrame,
    decision: pd.DataFrame,
    baseline: str,
) -> pd.DataFrame:
    """One row per arm, task and metric: score with CI, bytes in memory, verdict, Pareto front."""
    data = scores.merge(
        decision[["arm", "method", "memory_bytes", "disk_bytes"]], on="arm", how="left"
    )
    data["verdict"] = verdict_of(data, comparisons, baseline)
    data["panel"] = _panel(data["task"], data["metric"])
    data["memory_MB"] = data["memory_bytes"] / 1e6
    hib = (
        comparisons.dropna(subset=["metric"])
        .drop_duplicates(["task", "metric"])
        .set_index(["task", "metric"])
    )
    data["pareto"] = False
    for (task, metric), idx in data.groupby(["task", "metric"]).groups.items():
        rows = data.loc[idx]
        up = (
            bool(hib["higher_is_better"].get((task, metric), True))
            if "higher_is_better" in hib
            else True
        )
        data.loc[idx, "pareto"] = pareto_front(
            rows["memory_MB"].tolist(), rows["mean"].tolist(), up
        )
    return data


def memory_pareto(
    scores: pd.DataFrame,
    comparisons: pd.DataFrame,
    decision: pd.DataFrame,
    baseline: str,
    png: Path | str,
) -> None:
    """Score (95% CI) against bytes in memory (log scale), the Pareto front joined by a line."""
    data = memory_pareto_data(scores, comparisons, decision, baseline)
    data = data.dropna(subset=["memory_MB"])
    if data.empty:
        empty_figure("No arm has both a score and a memory record.", png, "score vs memory")
        return
    front = data[data["pareto"]].sort_values(["panel", "memory_MB"])
    data["front"] = data["pareto"].map({True: "on the Pareto front", False: "dominated"})
    logx = data["memory_MB"].map(math.log10)
    span = max(float(logx.max() - logx.min()), 1e-3)
    labels = point_labels(data, "memory_MB", "mean")
    # labels run rightwards from points in the left part of the axis, leftwards elsewhere
    right_side = labels["memory_MB"].map(math.log10) > logx.min() + 0.6 * span
    plot = (
        ggplot(data, aes("memory_MB", "mean"))
        + geom_step(
            front, aes("memory_MB", "mean"), direction="hv", color="#64748b", linetype="dashed"
        )
        + geom_errorbar(aes(ymin="ci_low", ymax="ci_high", color="verdict"), width=0.02 * span)
        + geom_point(aes(color="verdict", shape="front"), size=3, fill="white")
        + geom_text(
            labels[~right_side],
            aes("memory_MB", "mean", label="label"),
            ha="left",
            nudge_x=0.025 * span,
            size=7,
        )
        + geom_text(
            labels[right_side],
            aes("memory_MB", "mean", label="label"),
            ha="right",
            nudge_x=-0.025 * span,
            size=7,
        )  # fmt: skip
        + facet_wrap("panel", scales="free_y", ncol=2)
        + scale_x_log10(expand=(0.08, 0, 0.08, 0))
        + scale_color_manual(values=VERDICT_COLORS, limits=list(VERDICT_COLORS))
        + scale_shape_manual(values={"on the Pareto front": "o", "dominated": "x"})
        + labs(x="bytes in memory (MB, log scale)", y="score (95% CI)", color="verdict", shape="")
        + theme_bw()
    )
    save(plot, data, png, height=_panel_height(data["panel"].nunique()))


def quantize_time_data(
    arms: Mapping[str, Mapping[str, Any]], quant: Mapping[str, Mapping[str, Any]]
) -> pd.DataFrame:
    """Seconds each configured arm took to quantize, save and verify (NaN for arms not built)."""
    rows = []
    for arm, spec in arms.items():
        rec = quant.get(arm)
        rows.append(
            {
                "arm": arm,
                "method": rec["method"] if rec else spec["method"],
                "seconds": float(rec["seconds"]) if rec else math.nan,
                "device": ((rec or {}).get("device") or {}).get("name"),
                "built": rec is not None,
            }
        )
    return pd.DataFrame(rows)


def quantize_time(
    arms: Mapping[str, Mapping[str, Any]], quant: Mapping[str, Mapping[str, Any]], png: Path | str
) -> None:
    """Quantization time per arm, bars labelled with the seconds; arms not built are labelled."""
    data = quantize_time_data(arms, quant)
    if not data["built"].any():
        empty_figure("No arm was built.", png, "quantization time")
        return
    data["arm"] = pd.Categorical(data["arm"], categories=list(arms))
    data["label"] = [
        f"{s:.1f} s" if b else "missing"
        for s, b in zip(data["seconds"], data["built"], strict=True)
    ]
    data["y"] = data["seconds"].fillna(0)
    plot = (
        ggplot(data, aes("arm", "y", fill="method"))
        + geom_col(width=0.7)
        + geom_text(aes(label="label"), va="bottom", size=8)
        + labs(x="", y="seconds (quantize, save, reload, verify)", fill="method")
        + theme_bw()
        + theme(axis_text_x=element_text(rotation=30, ha="right"))
    )
    save(plot, data, png, height=4)


# --------------------------------------------------------------------------- speed


def _bench_rows(bench: pd.DataFrame, scenario: str) -> pd.DataFrame:
    """The benchmark table's measured rows of one scenario (unsupported modes dropped)."""
    rows = bench[(bench["scenario"] == scenario) & bench["supported"].astype(bool)].copy()
    return rows.dropna(subset=["median"])


def latency_data(bench: pd.DataFrame) -> pd.DataFrame:
    """Prefill latency rows of the benchmark table: arm, mode, prompt length, median/min/max ms."""
    cols = [
        "arm",
        "method",
        "mode",
        "device_kind",
        "prompt_length",
        "batch_size",
        "median",
        "min",
        "max",
        "unit",
    ]
    return _bench_rows(bench, "prefill")[cols].reset_index(drop=True)


def throughput_data(bench: pd.DataFrame) -> pd.DataFrame:
    """Generation throughput rows: arm, mode, batch size, median/min/max tokens/s, OOM."""
    cols = ["arm", "method", "mode", "device_kind", "batch_size", "prompt_length", "new_tokens",
            "median", "min", "max", "unit", "oom"]  # fmt: skip
    return _bench_rows(bench, "throughput")[cols].reset_index(drop=True)


def roofline_data(bench: pd.DataFrame) -> pd.DataFrame:
    """Batch-1 decode per arm and mode: ms/token, the roofline's ms/token and the fraction; a mode
    an arm cannot run in is a row too, with `supported` false and its reason."""
    cols = ["arm", "method", "mode", "device_kind", "median", "roofline_ms", "roofline_fraction",
            "supported", "reason"]  # fmt: skip
    unsupported = bench[~bench["supported"].astype(bool) & bench["scenario"].isna()]
    rows = pd.concat([_bench_rows(bench, "decode"), unsupported.assign(supported=False)])
    return rows[cols].reset_index(drop=True)


def _speed_plot(data: pd.DataFrame, x: str, xlab: str, ylab: str, arms: Sequence[str]):
    """Median (min-max bars) against x per arm on log-log axes, one panel per mode."""
    data = data.copy()
    data["arm"] = pd.Categorical(data["arm"], categories=[a for a in arms if a in set(data.arm)])
    dodge = position_dodge(width=0.05)
    return (
        ggplot(data, aes(x, "median", color="arm", group="arm"))
        + geom_line(position=dodge)
        + geom_errorbar(aes(ymin="min", ymax="max"), width=0.05, position=dodge)
        + geom_point(size=2, position=dodge)
        + facet_wrap("mode", ncol=2)
        + scale_x_log10(breaks=sorted(data[x].unique().tolist()))
        + scale_y_log10()
        + labs(x=xlab, y=ylab, color="arm")
        + theme_bw()
    ), data


def _no_bench_message(bench: pd.DataFrame | None, what: str) -> str | None:
    """Why a speed figure has nothing to show (None when the benchmark table has rows)."""
    if bench is None:
        return f"No {what}: the study's benchmark is disabled (benchmark.enabled: false)."
    if bench.empty:
        return f"No {what}: no benchmark has finished."
    return None


def latency(bench: pd.DataFrame | None, arms: Sequence[str], png: Path | str) -> None:
    """Prefill latency against prompt length per arm, one panel per execution mode."""
    message = _no_bench_message(bench, "latency")
    data = latency_data(bench) if message is None else pd.DataFrame()
    if message or data.empty:
        empty_figure(message or "No prefill measurement ran.", png, "latency vs prompt length")
        return
    plot, data = _speed_plot(data, "prompt_length", "prompt length (tokens, log scale)",
                             "prefill latency (ms, median; bars min–max)", arms)  # fmt: skip
    save(plot, data, png, height=4.5)


def throughput(bench: pd.DataFrame | None, arms: Sequence[str], png: Path | str) -> None:
    """Generation throughput against batch size per arm, one panel per execution mode."""
    message = _no_bench_message(bench, "throughput")
    data = throughput_data(bench) if message is None else pd.DataFrame()
    if message or data.empty:
        empty_figure(message or "No throughput measurement ran.", png, "throughput vs batch size")
        return
    plot, data = _speed_plot(data, "batch_size", "batch size (log scale)",
                             "generated tokens/s (median; bars min–max)", arms)  # fmt: skip
    save(plot, data, png, height=4.5)


def roofline(bench: pd.DataFrame | None, arms: Sequence[str], png: Path | str) -> None:
    """Batch-1 decode as a fraction of the memory-bandwidth roofline, per arm and mode."""
    message = _no_bench_message(bench, "roofline")
    data = roofline_data(bench) if message is None else pd.DataFrame()
    if message or data.empty:
        empty_figure(message or "No decode measurement ran.", png, "roofline fraction")
        return
    data["arm"] = pd.Categorical(data["arm"], categories=[a for a in arms if a in set(data.arm)])
    data["label"] = [
        "n/a" if not ok else f"{f:.2f}" if not math.isnan(f) else "–"
        for f, ok in zip(data["roofline_fraction"], data["supported"].astype(bool), strict=True)
    ]
    data["roofline_fraction"] = data["roofline_fraction"].fillna(0.0)
    plot = (
        ggplot(data, aes("arm", "roofline_fraction", fill="method"))
        + geom_col(width=0.7)
        + geom_text(aes(label="label"), va="bottom", size=7)
        + facet_wrap("mode", ncol=2)
        + labs(x="", y="roofline ms/token ÷ measured ms/token", fill="method")
        + theme_bw()
        + theme(axis_text_x=element_text(rotation=30, ha="right"))
    )
    save(plot, data, png, height=4.5)


# --------------------------------------------------------------------------- all of them


def draw_report_figures(
    scores_csv: Path | str,
    comparisons_csv: Path | str,
    decision_csv: Path | str,
    model_dirs: Sequence[Path | str],
    bench_files: Sequence[Path | str] | None,
    arms: Mapping[str, Mapping[str, Any]],
    baseline: str,
    out: Mapping[str, Path | str],
) -> None:
    """Every figure of the report from compare's tables, quantize.json and bench JSONs.

    ``bench_files`` None means the study has no benchmark (the speed figures say so). ``out``
    names the PNGs: accuracy, relative_change, ablation, score_vs_memory, latency, throughput,
    roofline, quantize_time.
    """
    from .aggregate import collect_benchmarks, load_quantize_records

    scores = pd.read_csv(scores_csv)
    comparisons = pd.read_csv(comparisons_csv)
    decision = pd.read_csv(decision_csv)
    quant = load_quantize_records(model_dirs)
    bench = None if bench_files is None else collect_benchmarks(bench_files)
    names = list(arms)
    accuracy(scores, comparisons, baseline, names, out["accuracy"])
    relative_change(comparisons, names, out["relative_change"])
    ablation(scores, comparisons, bnb4_factors(arms, quant), out["ablation"])
    memory_pareto(scores, comparisons, decision, baseline, out["score_vs_memory"])
    latency(bench, names, out["latency"])
    throughput(bench, names, out["throughput"])
    roofline(bench, names, out["roofline"])
    quantize_time(arms, quant, out["quantize_time"])


# --------------------------------------------------------------------------- agreement (issue 17)

KL_FLOOR = 1e-7
"""KL values below this are drawn at it on the log axis (float32 log-probabilities resolve about
1e-6 nats per token; the baseline against itself is exactly 0)."""


def kl_distribution_data(arm_jsons: Sequence[Path | str], arms: Sequence[str]) -> pd.DataFrame:
    """Per-token KL of every arm that was measured (tokens.npz beside its record), arms in config
    order, with the value drawn (at least KL_FLOOR)."""
    import numpy as np

    from .faithfulness import by_arm, tokens_path
    from .records import is_failure

    found = by_arm(arm_jsons)
    paths = {Path(p).name.removesuffix(".json"): Path(p) for p in arm_jsons}
    frames = []
    for arm in arms:
        rec = found.get(arm)
        if rec is None or is_failure(rec) or arm not in paths:
            continue
        with np.load(tokens_path(paths[arm])) as f:
            kl = f["kl"].astype(float)
        frames.append(pd.DataFrame({"arm": arm, "kl": kl, "drawn": np.maximum(kl, KL_FLOOR)}))
    if not frames:
        return pd.DataFrame(columns=["arm", "kl", "drawn"])
    data = pd.concat(frames, ignore_index=True)
    data["arm"] = pd.Categorical(data["arm"], categories=[a for a in arms if a in set(data["arm"])])
    return data


def kl_distribution(
    arm_jsons: Sequence[Path | str], table: pd.DataFrame, arms: Sequence[str], png: Path | str
) -> None:
    """Per-token KL(baseline ‖ arm) per arm: box plots on a log axis with the mean marked."""
    from plotnine import geom_boxplot

    data = kl_distribution_data(arm_jsons, arms)
    if data.empty:
        empty_figure("No arm's agreement with the baseline was measured.", png, "KL per arm")
        return
    means = table[table["status"] == "ok"][["arm", "kl_mean"]].copy()
    means = means[means["arm"].isin(data["arm"].cat.categories)]
    means["drawn"] = means["kl_mean"].clip(lower=KL_FLOOR)
    means["arm"] = pd.Categorical(means["arm"], categories=data["arm"].cat.categories)
    plot = (
        ggplot(data, aes("arm", "drawn"))
        + geom_boxplot(outlier_size=0.5, outlier_alpha=0.3)
        + geom_point(means, aes("arm", "drawn"), color="#dc2626", shape="D", size=2.5)
        + scale_y_log10()
        + labs(
            x="",
            y="KL(baseline ‖ arm) per token, nats (log scale)",
            title=f"red: mean; values below {KL_FLOOR:g} drawn at {KL_FLOOR:g}",
        )  # fmt: skip
        + theme_bw()
        + theme(axis_text_x=element_text(rotation=30, ha="right"))
    )
    save(plot, data, png, height=4.5)


def _vs_memory(
    table: pd.DataFrame, y: str, low: str, high: str, ylab: str, png: Path | str, title: str
) -> None:
    """One agreement measure (with its interval) against bytes in memory, one point per arm."""
    data = table[(table["status"] == "ok")].dropna(subset=["memory_bytes", y]).copy()
    if data.empty:
        empty_figure("No arm has both an agreement record and a memory record.", png, title)
        return
    data["memory_MB"] = data["memory_bytes"] / 1e6
    data["low"], data["high"] = data[low], data[high]
    logx = data["memory_MB"].map(math.log10)
    span = max(float(logx.max() - logx.min()), 1e-3)
    data["panel"] = title
    labels = point_labels(data.drop(columns=["low", "high"]), "memory_MB", y)
    plot = (
        ggplot(data, aes("memory_MB", y, color="method"))
        + geom_errorbar(aes(ymin="low", ymax="high"), width=0.02 * span)
        + geom_point(size=3)
        + geom_text(
            labels,
            aes("memory_MB", y, label="label"),
            color="#334155",
            size=7,
            ha="left",
            nudge_x=0.02 * span,
            inherit_aes=False,
        )  # fmt: skip
        + scale_x_log10(expand=(0.1, 0, 0.15, 0))
        + labs(x="bytes in memory (MB, log scale)", y=ylab, color="method")
        + theme_bw()
    )
    save(plot, data, png, height=4.5)


def draw_faithfulness_figures(
    table: pd.DataFrame,
    arm_jsons: Sequence[Path | str],
    arms: Mapping[str, Mapping[str, Any]],
    out: Mapping[str, Path | str],
) -> None:
    """The agreement figures: KL per arm (distribution), KL vs memory, agreement vs memory.
    ``table`` is quantstudy.faithfulness.summary_table's; ``out`` names the PNGs
    kl_distribution, kl_vs_memory and agreement_vs_memory."""
    kl_distribution(arm_jsons, table, list(arms), out["kl_distribution"])
    se = table["kl_se"].fillna(0) * 1.96
    kl = table.assign(kl_low=(table["kl_mean"] - se).clip(lower=0), kl_high=table["kl_mean"] + se)
    _vs_memory(kl, "kl_mean", "kl_low", "kl_high", "mean KL(baseline ‖ arm), nats (± 1.96 SE)",
               out["kl_vs_memory"], "KL vs memory")  # fmt: skip
    _vs_memory(table, "top1_agreement", "top1_agreement_ci_low", "top1_agreement_ci_high",
               "top-1 agreement with the baseline (CI)", out["agreement_vs_memory"],
               "agreement vs memory")  # fmt: skip
