"""Tests of quantstudy.stats against independent references (statsmodels, scipy, brute force)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import proportion_confint
from statsmodels.stats.weightstats import ttost_paired

from quantstudy import stats as qs

# --------------------------------------------------------------------------- builders


def paired_binary(
    n01: int, n10: int, n11: int = 30, n00: int = 20
) -> tuple[np.ndarray, np.ndarray]:
    """Baseline/arm 0-1 outcomes with the given 2x2 cell counts."""
    a = np.array([0] * n01 + [1] * n10 + [1] * n11 + [0] * n00, dtype=float)
    b = np.array([1] * n01 + [0] * n10 + [1] * n11 + [0] * n00, dtype=float)
    return a, b


def long_scores(
    arms: dict[str, np.ndarray],
    task: str = "t",
    metric: str = "acc",
    subjects: np.ndarray | None = None,
) -> pd.DataFrame:
    """A per-example score table for one task/metric from {arm: values}."""
    frames = []
    for arm, values in arms.items():
        n = len(values)
        frames.append(
            pd.DataFrame(
                {
                    "task": task,
                    "doc_id": np.arange(n),
                    "doc_hash": [f"h{i}" for i in range(n)],
                    "arm": arm,
                    "metric": metric,
                    "value": np.asarray(values, dtype=float),
                    "subject": subjects if subjects is not None else None,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def brute_force_sign_flip_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided p of the mean difference over all 2^n sign flips (zeros included)."""
    d = b - a
    obs = abs(d.mean())
    hits = 0
    total = 0
    for signs in itertools.product((1.0, -1.0), repeat=len(d)):
        total += 1
        hits += abs((np.array(signs) * d).mean()) >= obs - 1e-12
    return hits / total


# --------------------------------------------------------------------------- Wilson


@pytest.mark.parametrize(
    "successes,n,alpha",
    [
        (0, 10, 0.05),
        (10, 10, 0.05),
        (3, 10, 0.05),
        (57, 100, 0.05),
        (412, 500, 0.01),
        (1, 2, 0.1),
        (7000, 14042, 0.05),
    ],
)
def test_wilson_matches_statsmodels(successes, n, alpha):
    low, high = qs.wilson_ci(successes, n, alpha)
    ref = proportion_confint(successes, n, alpha=alpha, method="wilson")
    assert low == pytest.approx(ref[0], abs=1e-12)
    assert high == pytest.approx(ref[1], abs=1e-12)


def test_wilson_edge_cases():
    assert all(math.isnan(x) for x in qs.wilson_ci(0, 0))
    with pytest.raises(ValueError):
        qs.wilson_ci(5, 4)


# --------------------------------------------------------------------------- bootstrap


def test_bootstrap_ci_covers_mean_and_matches_scipy():
    rng = np.random.default_rng(1)
    x = rng.normal(0.3, 1.0, 200)
    low, high = qs.bootstrap_ci(x, n_boot=4000, seed=0)
    assert low < x.mean() < high
    ref = sps.bootstrap(
        (x,),
        np.mean,
        n_resamples=4000,
        method="percentile",
        confidence_level=0.95,
        rng=np.random.default_rng(2),
    ).confidence_interval
    width = ref.high - ref.low
    assert abs(low - ref.low) < 0.1 * width
    assert abs(high - ref.high) < 0.1 * width


def test_bootstrap_ci_binary_matches_scipy_and_wilson():
    # binary data take the multinomial shortcut; its interval must agree with resampling items
    x = (np.random.default_rng(14).random(400) < 0.3).astype(float)
    low, high = qs.bootstrap_ci(x, n_boot=4000, seed=0)
    ref = sps.bootstrap(
        (x,), np.mean, n_resamples=4000, method="percentile", rng=np.random.default_rng(1)
    ).confidence_interval
    wilson = qs.wilson_ci(x.sum(), x.size)
    width = ref.high - ref.low
    for ours, theirs in ((low, ref.low), (high, ref.high), (low, wilson[0]), (high, wilson[1])):
        assert abs(ours - theirs) < 0.1 * width


def test_bootstrap_is_deterministic_and_seed_sensitive():
    x = np.random.default_rng(3).random(50)
    assert qs.bootstrap_ci(x, 500, seed=7) == qs.bootstrap_ci(x, 500, seed=7)
    assert qs.bootstrap_ci(x, 500, seed=7) != qs.bootstrap_ci(x, 500, seed=8)


def test_bootstrap_coverage_is_near_nominal():
    rng = np.random.default_rng(4)
    hits = sum(
        lo <= 0.5 <= hi
        for lo, hi in (qs.bootstrap_ci(rng.random(60), 400, seed=s) for s in range(200))
    )
    assert 0.88 <= hits / 200 <= 0.99


def test_cluster_bootstrap_with_singletons_equals_naive():
    x = np.random.default_rng(5).random(80)
    assert qs.cluster_bootstrap_ci(x, np.arange(80), 300, seed=1) == qs.bootstrap_ci(x, 300, seed=1)
    # missing cluster labels are clusters of one
    assert qs.cluster_bootstrap_ci(x, [None] * 80, 300, seed=1) == qs.bootstrap_ci(x, 300, seed=1)


def test_cluster_bootstrap_wider_when_clusters_correlated():
    rng = np.random.default_rng(6)
    clusters = np.repeat(np.arange(20), 50)
    x = rng.normal(0, 1, 20)[clusters] + rng.normal(0, 0.5, clusters.size)
    naive = qs.bootstrap_ci(x, 1000, seed=0)
    clustered = qs.cluster_bootstrap_ci(x, clusters, 1000, seed=0)
    assert clustered[0] < x.mean() < clustered[1]
    assert (clustered[1] - clustered[0]) > 3 * (naive[1] - naive[0])


def test_paired_bootstrap_diff_ci():
    rng = np.random.default_rng(7)
    a = rng.random(300)
    b = a + 0.05 + rng.normal(0, 0.02, 300)
    low, high = qs.paired_bootstrap_diff_ci(a, b, 1000, seed=0)
    assert low < (b - a).mean() < high and low > 0
    assert (low, high) == qs.bootstrap_ci(b - a, 1000, seed=0)
    subj = np.repeat(np.arange(30), 10)
    assert qs.paired_bootstrap_diff_ci(a, b, 1000, 0, clusters=subj) == qs.cluster_bootstrap_ci(
        b - a, subj, 1000, 0
    )


# --------------------------------------------------------------------------- pairing


def test_pair_aligns_by_doc_id():
    df = long_scores({"base": np.array([1, 0, 1, 1]), "q": np.array([0, 0, 1, 1])})
    shuffled = df.sample(frac=1.0, random_state=0)
    a, b = qs.pair(shuffled, "t", "acc", "q", "base")
    np.testing.assert_array_equal(a, [1, 0, 1, 1])
    np.testing.assert_array_equal(b, [0, 0, 1, 1])


def test_pair_rejects_mismatched_hashes():
    df = long_scores({"base": np.ones(5), "q": np.ones(5)})
    df.loc[(df["arm"] == "q") & (df["doc_id"] == 3), "doc_hash"] = "other"
    with pytest.raises(ValueError, match="arms saw different items: not a paired comparison"):
        qs.pair(df, "t", "acc", "q", "base")


def test_pair_rejects_different_doc_sets_and_duplicates():
    df = long_scores({"base": np.ones(5), "q": np.ones(5)})
    short = df[~((df["arm"] == "q") & (df["doc_id"] == 4))]
    with pytest.raises(ValueError, match="arms saw different items: not a paired comparison"):
        qs.pair(short, "t", "acc", "q", "base")
    dup = pd.concat([df, df[df["arm"] == "q"].head(1)])
    with pytest.raises(ValueError, match="more than one row"):
        qs.pair(dup, "t", "acc", "q", "base")


def test_pair_keys_items_by_subject_and_doc_id():
    # lm-eval numbers documents per MMLU subtask: doc_id repeats across subjects
    subj = np.array(["s1", "s1", "s2", "s2"])
    df = long_scores({"base": np.array([1, 0, 0, 1]), "q": np.array([1, 1, 0, 0])}, subjects=subj)
    df["doc_id"] = [0, 1, 0, 1] * 2
    frame = qs.paired_frame(df, "t", "acc", "q", "base")
    assert list(frame["subject"]) == ["s1", "s1", "s2", "s2"]
    np.testing.assert_array_equal(frame["arm"] - frame["baseline"], [0, 1, 0, -1])


# --------------------------------------------------------------------------- McNemar


@pytest.mark.parametrize("n01,n10", [(0, 0), (3, 9), (10, 2), (7, 7), (12, 13), (0, 25)])
def test_mcnemar_exact_matches_statsmodels_and_binomtest(n01, n10):
    a, b = paired_binary(n01, n10)
    res = qs.mcnemar_test(a, b)
    assert res.method == "mcnemar-exact"
    assert (res.n01, res.n10) == (n01, n10)
    ref = sm_mcnemar([[20, n01], [n10, 30]], exact=True)
    assert res.statistic == ref.statistic
    assert res.pvalue == pytest.approx(ref.pvalue, rel=1e-12)
    if n01 + n10:
        assert res.pvalue == pytest.approx(sps.binomtest(n01, n01 + n10, 0.5).pvalue, rel=1e-9)


@pytest.mark.parametrize("n01,n10", [(13, 13 + 1), (20, 40), (100, 70), (5, 60), (200, 215)])
def test_mcnemar_chi2_matches_statsmodels(n01, n10):
    a, b = paired_binary(n01, n10)
    res = qs.mcnemar_test(a, b)
    assert res.method == "mcnemar-chi2"
    ref = sm_mcnemar([[20, n01], [n10, 30]], exact=False, correction=True)
    assert res.statistic == pytest.approx(ref.statistic, rel=1e-12)
    assert res.pvalue == pytest.approx(ref.pvalue, rel=1e-12)


def test_mcnemar_chi2_balanced_discordance_gives_p_one():
    res = qs.mcnemar_test(*paired_binary(20, 20))
    assert res.method == "mcnemar-chi2" and res.statistic == 0 and res.pvalue == 1.0


def test_mcnemar_rejects_non_binary():
    with pytest.raises(ValueError):
        qs.mcnemar_test([0.5, 1], [1, 1])


# --------------------------------------------------------------------------- permutation


def test_permutation_exact_matches_scipy_and_brute_force():
    rng = np.random.default_rng(8)
    a = rng.random(10)
    b = a + rng.normal(0.15, 0.2, 10)
    res = qs.paired_permutation_test(a, b)
    assert res.method == "exact" and res.n_permutations == 2**10
    ref = sps.permutation_test(
        (b, a),
        lambda x, y, axis: np.mean(x - y, axis=axis),
        permutation_type="samples",
        alternative="two-sided",
        n_resamples=np.inf,
        vectorized=True,
    )
    assert res.pvalue == pytest.approx(ref.pvalue, rel=1e-12)
    assert res.pvalue == pytest.approx(brute_force_sign_flip_p(a, b), rel=1e-12)
    assert res.statistic == pytest.approx((b - a).mean())


def test_permutation_exact_with_zero_and_tied_differences():
    a = np.array([0.0, 0.5, 0.5, 1.0, 0.2, 0.3, 0.3, 0.9, 0.1, 0.4, 0.6, 0.0])
    b = np.array([0.0, 0.5, 1.0, 0.5, 0.7, 0.3, 0.8, 0.9, 0.6, 0.4, 1.0, 0.5])
    res = qs.paired_permutation_test(a, b)
    assert res.n_nonzero == 7
    assert res.pvalue == pytest.approx(brute_force_sign_flip_p(a, b), rel=1e-12)


def test_permutation_all_zero_differences():
    res = qs.paired_permutation_test(np.ones(30), np.ones(30))
    assert res.pvalue == 1.0 and res.statistic == 0.0


def test_permutation_monte_carlo_close_to_scipy():
    rng = np.random.default_rng(9)
    a = rng.random(40)
    b = a + rng.normal(0.05, 0.2, 40)
    res = qs.paired_permutation_test(a, b, n_perm=20000, seed=1)
    assert res.method == "monte-carlo"
    ref = sps.permutation_test(
        (b, a),
        lambda x, y, axis: np.mean(x - y, axis=axis),
        permutation_type="samples",
        n_resamples=100_000,
        vectorized=True,
        rng=np.random.default_rng(2),
    )
    assert res.pvalue == pytest.approx(ref.pvalue, abs=0.02)  # ~4 Monte Carlo sd
    assert res.pvalue >= 1 / 20001
    assert qs.paired_permutation_test(a, b, 2000, seed=3) == qs.paired_permutation_test(
        a, b, 2000, seed=3
    )


# --------------------------------------------------------------------------- Holm


def test_holm_hand_worked():
    np.testing.assert_allclose(qs.holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    # monotone step-down and the cap at 1
    np.testing.assert_allclose(qs.holm([0.02, 0.5, 0.01]), [0.04, 0.5, 0.03])
    np.testing.assert_allclose(qs.holm([0.4, 0.6]), [0.8, 0.8])
    np.testing.assert_allclose(qs.holm([0.7, 0.9, 0.8]), [1.0, 1.0, 1.0])
    np.testing.assert_allclose(qs.holm([0.03]), [0.03])


def test_holm_matches_statsmodels():
    rng = np.random.default_rng(10)
    for m in (1, 2, 5, 13):
        p = rng.random(m) ** 3
        np.testing.assert_allclose(qs.holm(p), multipletests(p, method="holm")[1], rtol=1e-12)


def test_holm_ignores_nan():
    out = qs.holm([0.01, math.nan, 0.04])
    np.testing.assert_allclose(out, [0.02, math.nan, 0.04])


# --------------------------------------------------------------------------- TOST


@pytest.mark.parametrize(
    "shift,sd,margin",
    [(0.0, 0.05, 0.01), (0.004, 0.05, 0.01), (-0.02, 0.1, 0.01), (0.05, 0.3, 0.1)],
)
def test_tost_matches_statsmodels(shift, sd, margin):
    # without the zero-change floor, tost is the classic paired t TOST
    rng = np.random.default_rng(11)
    a = rng.random(400)
    b = a + rng.normal(shift, sd, 400)
    res = qs.tost(b - a, margin, value_range=None)
    p, (_, p1, _), (_, p2, _) = ttost_paired(b, a, -margin, margin)
    assert res.pvalue == pytest.approx(p, rel=1e-9)
    assert res.p_lower == pytest.approx(p1, rel=1e-9)
    assert res.p_upper == pytest.approx(p2, rel=1e-9)
    assert res.equivalent == (p < 0.05)
    # its (1 - 2 alpha) interval is the t-interval of the mean difference
    d = b - a
    low, high = sps.t.interval(0.90, d.size - 1, loc=d.mean(), scale=sps.sem(d))
    assert (res.low, res.high) == pytest.approx((low, high), rel=1e-9)
    # with the floor (R = 1, 400 items: 1 - 0.05^(1/400) = 0.0075) p is at least the floor's
    floored = qs.tost(b - a, margin)
    p_floor = (1 - (margin - abs(d.mean()))) ** 400 if abs(d.mean()) < margin else 1.0
    assert floored.pvalue == pytest.approx(max(p, p_floor), rel=1e-9)
    assert floored.equivalent == (floored.pvalue < 0.05)


def test_tost_zero_variance_and_degenerate():
    # the flaw of the classic t TOST: zero variance is "equivalent" from any sample size
    assert qs.tost(np.zeros(50), 0.01, value_range=None).pvalue == 0.0
    assert qs.tost(np.zeros(2), 0.01, value_range=None).equivalent
    # with the zero-change floor: 50 identical items resolve no better than +/- 0.058
    res = qs.tost(np.zeros(50), 0.01)
    assert not res.equivalent and res.pvalue == pytest.approx(0.99**50)
    assert res.high == pytest.approx(1 - 0.05 ** (1 / 50)) and res.low == -res.high
    assert not qs.tost(np.zeros(2), 0.01).equivalent
    assert qs.tost(np.full(50, 0.02), 0.01).pvalue == 1.0
    assert not qs.tost([0.0], 0.01).equivalent and math.isnan(qs.tost([0.0], 0.01).pvalue)
    with pytest.raises(ValueError):
        qs.tost([0.0, 0.1], 0.0)


# --------------------------------------------------------------------------- MDD


def test_mdd_closed_form_and_statsmodels_power():
    mdd = qs.min_detectable_difference(0.4, 500)
    assert mdd == pytest.approx((1.959963984540054 + 0.8416212335729143) * 0.4 / math.sqrt(500))
    d = NormalIndPower().solve_power(effect_size=None, nobs1=500, alpha=0.05, power=0.8, ratio=0)
    assert mdd == pytest.approx(d * 0.4, rel=1e-4)
    np.testing.assert_allclose(
        qs.min_detectable_difference(np.array([0.1, 0.2]), 100), [0.028016, 0.056032], rtol=1e-4
    )


def test_mdd_gives_80_percent_power_in_simulation():
    rng = np.random.default_rng(12)
    n, sd, reps = 200, 0.5, 4000
    mdd = qs.min_detectable_difference(sd, n)
    d = rng.normal(mdd, sd, size=(reps, n))
    t = d.mean(axis=1) / (d.std(axis=1, ddof=1) / math.sqrt(n))
    power = np.mean(np.abs(t) > sps.t.isf(0.025, n - 1))
    assert power == pytest.approx(0.8, abs=0.03)


# --------------------------------------------------------------------------- verdicts


def test_verdict_rules():
    m = 0.01
    assert qs.verdict(0.001, (-0.002, 0.004), 0.6, 0.6, (-0.001, 0.003), m).verdict == "equivalent"
    # equivalence takes precedence over a significant difference smaller than the margin
    assert qs.verdict(0.004, (0.002, 0.006), 1e-4, 1e-4, (0.0025, 0.0055), m).verdict == (
        "equivalent"
    )
    # an interval reaching the margin is not inside it
    assert qs.verdict(0.0, (-0.01, 0.01), 1.0, 1.0, (-0.01, 0.009), m).verdict == "inconclusive"
    assert qs.verdict(-0.2, (-0.25, -0.15), 1e-9, 1e-8, (-0.24, -0.16), m).verdict == "worse"
    assert qs.verdict(0.2, (0.15, 0.25), 1e-9, 1e-8, (0.16, 0.24), m).verdict == "better"
    assert qs.verdict(-0.02, (-0.05, 0.01), 0.01, 0.06, (-0.04, 0.0), m).verdict == "inconclusive"
    # a significant p whose CI holds 0 is not a verdict (the test and the interval disagree)
    assert qs.verdict(-0.02, (-0.05, 0.01), 7e-6, 7e-6, (-0.04, 0.0), m).verdict == "inconclusive"
    nan = math.nan
    assert qs.verdict(nan, (nan, nan), nan, nan, (nan, nan), m).verdict == "inconclusive"
    v = qs.verdict(-0.2, (-0.25, -0.15), 1e-9, 1e-8, (-0.24, -0.16), m, tost_p=1.0)
    assert (v.diff, v.ci_low, v.ci_high, v.p, v.p_holm, v.eq_low, v.eq_high, v.tost_p) == (
        -0.2,
        -0.25,
        -0.15,
        1e-9,
        1e-8,
        -0.24,
        -0.16,
        1.0,
    )


def _study(n: int = 500, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    base = (rng.random(n) < 0.7).astype(float)
    worse = base.copy()
    worse[np.flatnonzero(base == 1)[:100]] = 0  # loses 20 points
    return long_scores({"base": base, "same": base.copy(), "worse": worse})


def test_compare_verdicts_on_constructed_data():
    scores, comp = qs.compare(_study(), "base", n_boot=300)
    assert list(scores.columns) == list(qs.SCORE_COLUMNS)
    assert list(comp.columns) == list(qs.COMPARISON_COLUMNS)
    assert set(scores["ci_method"]) == {"wilson"}
    same = comp.set_index("arm").loc["same"]
    worse = comp.set_index("arm").loc["worse"]
    # 500 identical items: Tango's 90% interval is +/- 1.645^2 / (500 + 1.645^2), inside 0.01
    assert same["verdict"] == "equivalent" and same["diff"] == 0 and bool(same["equivalent"])
    assert same["eq_high"] == pytest.approx(
        sps.norm.isf(0.05) ** 2 / (500 + sps.norm.isf(0.05) ** 2)
    )
    assert same["p"] == 1.0 and same["test"] == "mcnemar-exact"
    assert same["diff_ci_method"] == same["eq_method"] == "tango-score"
    assert same["diff_ci_low"] < 0 < same["diff_ci_high"]  # not the degenerate [0, 0]
    assert worse["verdict"] == "worse" and worse["diff"] == pytest.approx(-0.2)
    assert worse["test"] == "mcnemar-chi2" and worse["diff_ci_high"] < 0
    assert (worse["diff_ci_low"], worse["diff_ci_high"]) == qs.tango_ci(0, 100, 500)
    assert "base" not in set(comp["arm"])
    np.testing.assert_allclose(comp["p_holm"], qs.holm(comp["p"]))
    assert worse["mdd"] == pytest.approx(qs.min_detectable_difference(0.4004, 500), rel=1e-3)


def test_compare_missing_arms_and_tasks_are_reported():
    df = _study()
    other = long_scores({"base": np.ones(20), "same": np.ones(20)}, task="t2")
    df = pd.concat([df, other], ignore_index=True)
    _, comp = qs.compare(
        df, "base", n_boot=100, tasks=["t", "t2", "t3"], arms=["base", "same", "worse", "ghost"]
    )
    missing = comp[comp["verdict"] == "missing"]
    assert set(zip(missing["arm"], missing["task"], strict=True)) == {
        ("ghost", "t"),
        ("worse", "t2"),
        ("ghost", "t2"),
        ("same", "t3"),
        ("worse", "t3"),
        ("ghost", "t3"),
    }
    assert (missing["n"] == 0).all() and missing["p"].isna().all()
    # Holm over the non-missing arms only
    fam = comp[(comp["task"] == "t") & (comp["verdict"] != "missing")]
    np.testing.assert_allclose(fam["p_holm"], qs.holm(fam["p"]))


def test_compare_continuous_and_clustered():
    rng = np.random.default_rng(13)
    n = 300
    subj = np.repeat([f"s{i}" for i in range(10)], n // 10)
    base = rng.random(n)
    arm = np.clip(base + rng.normal(0, 0.05, n), 0, 1)
    df = pd.concat(
        [
            long_scores({"base": base, "q": arm}, task="qa", metric="f1"),
            long_scores(
                {"base": (base > 0.5).astype(float), "q": (arm > 0.5).astype(float)},
                task="mmlu",
                subjects=subj,
            ),
        ],
        ignore_index=True,
    )
    scores, comp = qs.compare(df, "base", n_boot=200, n_perm=2000)
    methods = dict(
        zip(zip(scores["arm"], scores["task"], strict=True), scores["ci_method"], strict=True)
    )
    assert (
        methods[("base", "qa")] == "bootstrap" and methods[("base", "mmlu")] == "cluster-bootstrap"
    )
    by_task = comp.set_index("task")
    assert by_task.loc["qa", "test"] == "permutation"
    assert by_task.loc["qa", "diff_ci_method"] == "bootstrap+floor"
    assert by_task.loc["qa", "eq_method"] == "t+floor"
    # a task with subjects is tested, and its intervals drawn, subject by subject
    assert by_task.loc["mmlu", "test"] == "cluster-permutation"
    assert by_task.loc["mmlu", "diff_ci_method"] == "cluster-bootstrap+floor"
    assert by_task.loc["mmlu", "eq_method"] == "cluster-bootstrap+floor"
    assert (comp["verdict"].isin(qs.VERDICTS)).all()


def test_compare_is_deterministic_and_stable_under_added_arms():
    df = _study()
    s1, c1 = qs.compare(df, "base", n_boot=200, seed=3)
    s2, c2 = qs.compare(df, "base", n_boot=200, seed=3)
    pd.testing.assert_frame_equal(s1, s2)
    pd.testing.assert_frame_equal(c1, c2)
    s3, _ = qs.compare(df[df["arm"] != "same"], "base", n_boot=200, seed=3)
    key = ["arm", "task", "metric"]
    merged = s3.merge(s1, on=key, suffixes=("", "_all"))
    np.testing.assert_array_equal(merged["ci_low"], merged["ci_low_all"])


def test_compare_propagates_pairing_error():
    df = _study()
    df.loc[(df["arm"] == "worse") & (df["doc_id"] == 0), "doc_hash"] = "x"
    with pytest.raises(ValueError, match="not a paired comparison"):
        qs.compare(df, "base", n_boot=50)
