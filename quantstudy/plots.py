"""plotnine figures of the study; each is saved as PNG and SVG with its data as CSV."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from plotnine import (
    aes,
    facet_wrap,
    geom_errorbar,
    geom_point,
    geom_text,
    ggplot,
    labs,
    scale_x_log10,
    theme,
    theme_bw,
)


def save(plot, data: pd.DataFrame, png: Path | str, width: float = 8, height: float = 5) -> None:
    """Write the figure as PNG and SVG beside it, and the data it shows as CSV."""
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    plot.save(png, width=width, height=height, dpi=150, verbose=False)
    plot.save(png.with_suffix(".svg"), width=width, height=height, verbose=False)
    data.to_csv(png.with_suffix(".csv"), index=False)


def score_vs_memory_data(results: pd.DataFrame, memory: pd.DataFrame) -> pd.DataFrame:
    """One row per arm, task and metric: score, its stderr, and the arm's weight bytes on disk."""
    data = results.merge(memory[["arm", "disk_bytes", "memory_bytes"]], on="arm")
    data["panel"] = data["task"] + ": " + data["metric"]
    data["disk_MB"] = data["disk_bytes"] / 1e6
    data["low"] = data["value"] - data["stderr"].fillna(0)
    data["high"] = data["value"] + data["stderr"].fillna(0)
    return data


def score_vs_memory(results: pd.DataFrame, memory: pd.DataFrame, png: Path | str) -> None:
    """Score (± stderr) against the arm's weight bytes on disk, one panel per task metric."""
    data = score_vs_memory_data(results, memory)
    plot = (
        ggplot(data, aes("disk_MB", "value", color="method"))
        + geom_errorbar(aes(ymin="low", ymax="high"), width=0.02)
        + geom_point(size=3)
        + geom_text(aes(label="arm"), nudge_y=0.015, size=7, show_legend=False)
        + facet_wrap("panel", scales="free_y")
        + scale_x_log10()
        + labs(x="weights on disk (MB, log scale)", y="score", color="method")
        + theme_bw()
        + theme(figure_size=(8, 5))
    )
    n_panels = data["panel"].nunique()
    save(plot, data, png, height=max(4, 3 * ((n_panels + 2) // 3)))
