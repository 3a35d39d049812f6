"""Tests of quantstudy.plots: the data behind each figure, the Pareto front, and the files."""

from __future__ import annotations

import itertools
import math

import pandas as pd
import pytest

from quantstudy import aggregate, plots
from tests.test_compare import ARMS, BENCH_MS, study  # noqa: F401  (study is a fixture)


def tables(study):  # noqa: F811
    _, files, out = study
    return (
        pd.read_csv(out["scores"]),
        pd.read_csv(out["comparisons"]),
        pd.read_csv(out["decision"]),
        aggregate.load_quantize_records(files["models"]),
        files,
    )


# --------------------------------------------------------------------------- Pareto


def brute_front(points, up=True):
    """Pareto front by definition, for checking."""
    out = []
    for i, (m, s) in enumerate(points):
        s = s if up else -s
        better = [(m2, s2 if up else -s2) for j, (m2, s2) in enumerate(points) if j != i]
        out.append(not any(m2 <= m and s2 >= s and (m2 < m or s2 > s) for m2, s2 in better))
    return out


@pytest.mark.parametrize("up", [True, False])
def test_pareto_front_matches_its_definition(up):
    grid = [1.0, 2.0, 3.0]
    for points in itertools.product(itertools.product(grid, grid), repeat=3):
        points = list(points)
        mem, score = zip(*points, strict=True)
        assert plots.pareto_front(mem, score, up) == brute_front(points, up), points


def test_pareto_front_ignores_nan():
    assert plots.pareto_front([1.0, math.nan, 2.0], [0.5, 0.9, 0.4]) == [True, False, False]


def test_score_vs_memory_marks_the_front(study):  # noqa: F811
    scores, comparisons, decision, _, _ = tables(study)
    data = plots.memory_pareto_data(scores, comparisons, decision, "fp32")
    mc = data[(data.task == "mc") & (data.metric == "acc")].set_index("arm")
    # "bad" is smallest, "small" next and as good as the baseline: both on the front;
    # "same" and the baseline hold more bytes for the same score
    assert mc["pareto"].to_dict() == {"fp32": False, "same": False, "bad": True, "small": True}
    assert mc.loc["small", "memory_MB"] == pytest.approx(1000 / 1e6)
    assert mc.loc["bad", "verdict"] == "worse" and mc.loc["fp32", "verdict"] == "baseline"


# --------------------------------------------------------------------------- accuracy


def test_relative_change_is_the_diff_in_percent_of_the_baseline(study):  # noqa: F811
    _, comparisons, _, _, _ = tables(study)
    data = plots.relative_change_data(comparisons, list(ARMS))
    assert data[data.arm == "gone"]["change_pct"].isna().all()
    assert set(data[data.arm == "gone"]["label"]) == {"missing"}
    row = data[(data.arm == "bad") & (data.task == "mc")].iloc[0]
    assert row["change_pct"] == pytest.approx(100 * row["diff"] / row["baseline_mean"])
    assert row["low_pct"] == pytest.approx(100 * row["diff_ci_low"] / row["baseline_mean"])
    assert list(dict.fromkeys(data["arm"])) == ["same", "bad", "small", "gone"]


def test_ablation_grid_has_every_combination(study):  # noqa: F811
    scores, comparisons, _, quant, _ = tables(study)
    factors = plots.bnb4_factors(ARMS, quant)
    assert factors.set_index("arm")["quant_type"].to_dict() == {"bad": "fp4", "small": "nf4"}
    data = plots.ablation_data(scores, comparisons, factors)
    mc = data[(data.task == "mc") & (data.metric == "acc")]
    # 2 types x 2 double-quant settings x 1 compute dtype: two arms, two empty combinations
    assert len(mc) == 4
    assert sorted(mc["state"]) == ["equivalent", "no arm", "no arm", "worse"]
    small = mc[mc.arm == "small"].iloc[0]
    assert (small["quant_type"], small["double_quant"]) == ("nf4", "double quant")
    expected = scores[(scores.arm == "small") & (scores.task == "mc")]["mean"].iloc[0]
    assert small["mean"] == pytest.approx(expected)


def test_ablation_of_an_unbuilt_arm_is_missing(study):  # noqa: F811
    scores, comparisons, _, quant, _ = tables(study)
    arms = ARMS | {"nf4_bf16": {"method": "bnb-4bit", "quant_type": "nf4", "compute_dtype": "bf16"}}
    factors = plots.bnb4_factors(arms, quant)
    assert not factors.set_index("arm").loc["nf4_bf16", "built"]
    data = plots.ablation_data(scores, comparisons, factors)
    cell = data[(data.arm == "nf4_bf16") & (data.task == "mc")].iloc[0]
    assert cell["state"] == "missing" and cell["compute_dtype"] == "compute bf16"


# --------------------------------------------------------------------------- speed


def test_speed_data_come_from_the_benchmark_table(study):  # noqa: F811
    _, _, _, _, files = tables(study)
    bench = aggregate.collect_benchmarks(files["bench"])
    lat = plots.latency_data(bench)
    row = lat[(lat.arm == "small") & (lat["mode"] == "eager") & (lat.prompt_length == 16)].iloc[0]
    assert row["median"] == pytest.approx(16 * BENCH_MS["small"] / 10)
    thr = plots.throughput_data(bench)
    row = thr[(thr.arm == "same") & (thr["mode"] == "static") & (thr.batch_size == 2)].iloc[0]
    assert row["median"] == pytest.approx(1000 * 2 / BENCH_MS["same"])
    roof = plots.roofline_data(bench).set_index(["arm", "mode"])
    assert roof.loc[("bad", "eager"), "roofline_fraction"] == pytest.approx(1 / BENCH_MS["bad"])


def test_roofline_shows_an_unsupported_mode_as_such(tmp_path):
    from tests.test_compare import bench_record

    records = [
        bench_record("fp32", "fp32", 10.0, 10.0),
        bench_record("bad", "fp32", 5.0, 10.0, static=False),
    ]
    bench = pd.DataFrame([r for rec in records for r in aggregate.bench_rows(rec)])
    roof = plots.roofline_data(bench).set_index(["arm", "mode"])
    assert roof.loc[("bad", "static"), "supported"] == False  # noqa: E712  (numpy bool)
    assert roof.loc[("bad", "static"), "reason"] == "not on this device"
    assert roof.loc[("bad", "eager"), "roofline_fraction"] == pytest.approx(1 / 5.0)
    png = tmp_path / "roofline.png"
    plots.roofline(bench, ["fp32", "bad"], png)
    drawn = pd.read_csv(png.with_suffix(".csv"), keep_default_na=False).set_index(["arm", "mode"])
    assert drawn.loc[("bad", "static"), "label"] == "n/a"
    assert drawn.loc[("bad", "eager"), "label"] == "0.20"


# --------------------------------------------------------------------------- files


def test_every_figure_is_written_with_svg_and_csv(study, tmp_path):  # noqa: F811
    _, files, out = study
    names = ["accuracy", "relative_change", "ablation", "score_vs_memory", "latency",
             "throughput", "roofline", "quantize_time"]  # fmt: skip
    pngs = {n: tmp_path / f"{n}.png" for n in names}
    plots.draw_report_figures(out["scores"], out["comparisons"], out["decision"],
                              files["models"], None, ARMS, "fp32", pngs)  # fmt: skip
    for name, png in pngs.items():
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert png.with_suffix(".svg").read_text().lstrip().startswith("<?xml"), name
        assert png.with_suffix(".csv").stat().st_size > 0, name
    # no benchmark: the speed figures say why instead of disappearing
    for name in ("latency", "throughput", "roofline"):
        note = pd.read_csv(pngs[name].with_suffix(".csv"))["note"].iloc[0]
        assert "benchmark is disabled" in note
    times = pd.read_csv(pngs["quantize_time"].with_suffix(".csv")).set_index("arm")
    assert times.loc["small", "seconds"] == 1.5 and not times.loc["gone", "built"]
    acc = pd.read_csv(pngs["accuracy"].with_suffix(".csv"))
    assert set(acc["arm"]) == set(ARMS)
    gone = acc[acc.arm == "gone"]
    assert len(gone) == 3 and (gone["verdict"] == "missing").all() and gone["mean"].isna().all()


def test_a_study_without_4bit_arms_gets_an_explained_ablation(study, tmp_path):  # noqa: F811
    scores, comparisons, _, _, _ = tables(study)
    png = tmp_path / "ablation.png"
    plots.ablation(scores, comparisons, plots.bnb4_factors({}, {}), png)
    assert "no 4-bit bitsandbytes arms" in pd.read_csv(png.with_suffix(".csv"))["note"].iloc[0]
