"""Equivalence and cluster-aware tests (issue #12) against independent references.

Each method is checked against a reference written differently: Tango's interval against a
brute-force inversion of the score test whose restricted MLE comes from numerical maximisation
of the multinomial likelihood; the zero-change floor against hand-worked numbers; the subject
permutation test against enumeration of every sign pattern. Seeded simulations show that the
false-equivalence rate at a true difference of twice the margin stays within alpha.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import optimize
from scipy import stats as sps
from scipy.special import xlogy
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar

from quantstudy import stats as qs
from tests.test_stats import long_scores

ALPHA = 0.05


def paired_counts(b: int, c: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Baseline/arm 0-1 outcomes: b items only the arm gets right, c only the baseline."""
    rest = n - b - c
    base = np.array([0] * b + [1] * c + [1] * (rest // 2) + [0] * (rest - rest // 2), float)
    arm = np.array([1] * b + [0] * c + [1] * (rest // 2) + [0] * (rest - rest // 2), float)
    return base, arm


# --------------------------------------------------------------------------- Tango, brute force


def brute_score(b: int, c: int, n: int, delta: float) -> float:
    """Tango's score statistic with the restricted MLE found numerically.

    Cells: +1 with probability p_c + delta, -1 with p_c, 0 with the rest; the likelihood is
    maximised over p_c by a bounded scalar search, not by the closed-form root.
    """
    lo, hi = max(0.0, -delta), (1.0 - delta) / 2.0

    def neg_loglik(pc: float) -> float:
        pb = pc + delta
        return -(xlogy(b, pb) + xlogy(c, pc) + xlogy(n - b - c, max(1.0 - pb - pc, 0.0)))

    if hi - lo < 1e-15:
        pc = lo
    else:
        pc = optimize.minimize_scalar(
            neg_loglik, bounds=(lo, hi), method="bounded", options={"xatol": 1e-13}
        ).x
        # the optimum may sit on a bound (an empty cell): compare with the bounds themselves
        pc = min((lo, pc, hi), key=neg_loglik)
    pb = pc + delta
    var = pb + pc - (pb - pc) ** 2  # the variance of one item's difference under H0
    num = b - c - n * delta
    if var <= 0:
        return 0.0 if num == 0 else math.copysign(math.inf, num)
    return num / math.sqrt(n * var)


def brute_interval(b: int, c: int, n: int, alpha: float) -> tuple[float, float]:
    """The set {delta : |Z| < z} by a grid over [-1, 1], its ends refined by bisection."""
    z = sps.norm.isf(alpha / 2)
    grid = np.linspace(-1 + 1e-12, 1 - 1e-12, 201)
    inside = np.array([abs(brute_score(b, c, n, d)) < z for d in grid])
    idx = np.flatnonzero(inside)
    assert idx.size and np.all(np.diff(idx) == 1), "the accepted set is one interval"

    def refine(out: float, ins: float) -> float:
        for _ in range(60):
            mid = (out + ins) / 2
            if abs(brute_score(b, c, n, mid)) < z:
                ins = mid
            else:
                out = mid
        return (out + ins) / 2

    low = -1.0 if idx[0] == 0 else refine(grid[idx[0] - 1], grid[idx[0]])
    high = 1.0 if idx[-1] == grid.size - 1 else refine(grid[idx[-1] + 1], grid[idx[-1]])
    return low, high


TABLES = [(0, 0, 2), (0, 0, 30), (1, 0, 10), (0, 3, 12), (5, 2, 30), (3, 9, 50), (10, 0, 10),
          (0, 7, 7), (7, 7, 40), (2, 1, 3), (40, 20, 160)]  # fmt: skip


@pytest.mark.parametrize("b,c,n", TABLES)
def test_tango_ci_matches_brute_force_inversion(b, c, n):
    for alpha in (0.05, 0.10):
        ours = qs.tango_ci(b, c, n, alpha)
        ref = brute_interval(b, c, n, alpha)
        assert ours == pytest.approx(ref, abs=2e-6), (alpha, ours, ref)
        assert ours[0] <= (b - c) / n <= ours[1]
        assert -1.0 <= ours[0] and ours[1] <= 1.0


@pytest.mark.parametrize("b,c,n", [(1, 0, 10), (3, 9, 50), (0, 0, 5), (17, 4, 200), (3, 3, 8)])
def test_tango_score_matches_brute_force_and_mcnemar(b, c, n):
    for delta in (-0.3, -0.05, 0.0, 0.02, 0.4):
        assert qs.tango_score(b, c, n, delta) == pytest.approx(
            brute_score(b, c, n, delta), rel=1e-6, abs=1e-9
        )
    if b + c:
        # at delta = 0 the score statistic is McNemar's, without continuity correction
        ref = sm_mcnemar([[0, b], [c, n - b - c]], exact=False, correction=False).statistic
        assert qs.tango_score(b, c, n, 0.0) ** 2 == pytest.approx(ref, rel=1e-12)


def test_tango_ci_reproduces_propcis():
    # R PropCIs::scoreci.mp, 90 %, as pinned from an R run in a public test suite (53 discordant
    # pairs among 618, 28 one way, 25 the other): [-0.0148, +0.0247]; the brute-force inversion
    # above gives the same
    low, high = qs.tango_ci(28, 25, 618, 0.10)
    assert (round(low, 4), round(high, 4)) == (-0.0148, 0.0247)
    assert qs.tango_ci(25, 28, 618, 0.10) == pytest.approx((-high, -low), abs=1e-12)


def test_tango_closed_form_at_zero_discordance():
    # with b = c = 0, Z(delta) = -sqrt(n delta / (1 - delta)): the limits are z^2 / (n + z^2)
    for n in (1, 2, 20, 400, 14042):
        z2 = sps.norm.isf(0.025) ** 2
        assert qs.tango_ci(0, 0, n) == pytest.approx((-z2 / (n + z2), z2 / (n + z2)), rel=1e-9)
    # all items changed one way: the interval reaches the end of [-1, 1]
    assert qs.tango_ci(5, 0, 5)[1] == 1.0 and qs.tango_ci(0, 5, 5)[0] == -1.0
    assert all(math.isnan(x) for x in qs.tango_ci(0, 0, 0))
    with pytest.raises(ValueError):
        qs.tango_ci(3, 3, 5)


def test_identical_items_are_equivalent_only_from_about_three_over_the_margin():
    m = 0.01
    assert not qs.tango_equivalence(0, 0, 2, m).equivalent
    assert not qs.tango_equivalence(0, 0, 250, m).equivalent
    assert qs.tango_equivalence(0, 0, 400, m).equivalent
    # the boundary: n > z^2 (1 - m) / m with z = z_{0.95}
    boundary = sps.norm.isf(ALPHA) ** 2 * (1 - m) / m
    assert 267 < boundary < 268
    assert not qs.tango_equivalence(0, 0, 267, m).equivalent
    assert qs.tango_equivalence(0, 0, 268, m).equivalent


@pytest.mark.parametrize("b,c,n", TABLES + [(0, 0, 400), (4, 2, 1000), (30, 12, 2000)])
def test_tango_equivalence_p_value_agrees_with_its_interval(b, c, n):
    for margin in (0.01, 0.05, 0.2):
        for alpha in (0.01, 0.05, 0.1):
            res = qs.tango_equivalence(b, c, n, margin, alpha)
            assert (res.low, res.high) == qs.tango_ci(b, c, n, 2 * alpha)
            assert res.equivalent == (-margin < res.low and res.high < margin)
            assert res.equivalent == (res.pvalue < alpha)
        # the p-value is the alpha at which the interval touches the margin
        res = qs.tango_equivalence(b, c, n, margin)
        if 1e-6 < res.pvalue < 0.49:
            low, high = qs.tango_ci(b, c, n, 2 * res.pvalue)
            assert min(abs(low + margin), abs(high - margin)) < 1e-6


# --------------------------------------------------------------------------- zero-change floor


def test_zero_change_bound_hand_worked():
    assert qs.zero_change_bound(1) == pytest.approx(0.95)
    assert qs.zero_change_bound(20) == pytest.approx(0.139109, abs=1e-6)  # 1 - exp(ln .05 / 20)
    assert qs.zero_change_bound(300) == pytest.approx(0.0099361, abs=1e-7)  # ~ 3 / n
    assert qs.zero_change_bound(50, 0.025) == pytest.approx(0.0711, abs=1e-4)
    assert math.isnan(qs.zero_change_bound(0))
    # it is the exact bound: n items all unchanged has probability alpha at that rate
    assert (1 - qs.zero_change_bound(37)) ** 37 == pytest.approx(0.05)


def test_value_range():
    assert qs.value_range([0.0, 0.3, 1.0]) == 1.0
    assert qs.value_range([0.2, 0.4]) == 1.0
    assert qs.value_range([-3.0, 5.0]) == 8.0
    assert qs.value_range([2.0, 5.0]) == 5.0


def test_continuous_floor_hand_worked():
    # 5 items, one changed by +0.2: mean 0.04, sd sqrt(0.008), se 0.04; t_{0.95,4} = 2.131847
    # t-interval [-0.045274, 0.125274]; floor 1 - 0.05^(1/5) = 0.450720: [-0.410720, 0.490720]
    res = qs.tost([0.2, 0, 0, 0, 0], 0.01)
    assert (res.low, res.high) == pytest.approx((-0.410720, 0.490720), abs=1e-6)
    assert not res.equivalent and res.method == "t+floor"
    no_floor = qs.tost([0.2, 0, 0, 0, 0], 0.01, value_range=None)
    assert (no_floor.low, no_floor.high) == pytest.approx((-0.045274, 0.125274), abs=1e-6)
    # a range of 2 doubles the floor
    assert qs.tost(np.zeros(10), 0.5, value_range=2.0).high == pytest.approx(2 * (1 - 0.05**0.1))
    # identical items: equivalent at 0.01 from n > ln(0.05) / ln(0.99) = 298.07
    assert not qs.tost(np.zeros(2), 0.01).equivalent
    assert not qs.tost(np.zeros(298), 0.01).equivalent
    assert qs.tost(np.zeros(299), 0.01).equivalent
    assert qs.tost(np.zeros(400), 0.01).equivalent
    # many items: the t-interval is wider than the floor and is what counts
    d = np.tile([0.5, -0.5], 500)
    res = qs.tost(d, 0.05)
    low, high = sps.t.interval(0.90, d.size - 1, loc=0.0, scale=sps.sem(d))
    assert (res.low, res.high) == pytest.approx((low, high), rel=1e-9)


@pytest.mark.parametrize("n,shift", [(5, 0.0), (40, 0.003), (300, 0.0), (300, -0.002), (2, 0.0)])
def test_tost_p_value_agrees_with_its_interval(n, shift):
    rng = np.random.default_rng(n)
    d = np.where(rng.random(n) < 0.05, rng.normal(0, 0.05, n), 0.0) + shift
    for margin in (0.01, 0.03, 0.3):
        for alpha in (0.01, 0.05, 0.1):
            res = qs.tost(d, margin, alpha)
            assert res.equivalent == (-margin < res.low and res.high < margin)
            assert res.equivalent == (res.pvalue < alpha)


# --------------------------------------------------------------------------- clusters


def brute_cluster_p(d: np.ndarray, clusters: np.ndarray) -> float:
    """Two-sided p over every assignment of one sign per cluster, flipping the items."""
    labels = sorted(set(clusters))
    obs = abs(d.mean())
    hits = total = 0
    for signs in itertools.product((1.0, -1.0), repeat=len(labels)):
        s = np.ones_like(d)
        for label, sign in zip(labels, signs, strict=True):
            s[clusters == label] = sign
        total += 1
        hits += abs((s * d).mean()) >= obs - 1e-12
    return hits / total


def test_cluster_permutation_matches_enumeration_of_sign_patterns():
    rng = np.random.default_rng(20)
    sizes = [3, 7, 1, 12, 5, 9, 4]
    clusters = np.repeat([f"s{i}" for i in range(len(sizes))], sizes)
    a = rng.random(clusters.size)
    b = a + rng.normal(0.05, 0.2, clusters.size)
    b[clusters == "s2"] = a[clusters == "s2"]  # a cluster whose differences sum to 0
    res = qs.cluster_permutation_test(a, b, clusters)
    assert res.method == "cluster-exact" and res.n_nonzero == 6
    assert res.pvalue == pytest.approx(brute_cluster_p(b - a, clusters), rel=1e-12)
    assert res.statistic == pytest.approx((b - a).mean())
    # one item per cluster: the item-level test
    single = qs.cluster_permutation_test(a, b, np.arange(a.size))
    assert single.pvalue == qs.paired_permutation_test(a, b).pvalue


def test_cluster_permutation_with_few_clusters_cannot_reach_small_p():
    # two subjects, every item worse: p = 2 / 2^2 whatever the number of items
    a, b = np.ones(200), np.zeros(200)
    res = qs.cluster_permutation_test(a, b, np.repeat(["x", "y"], 100))
    assert res.pvalue == 0.5 and res.n_permutations == 4
    res = qs.cluster_permutation_test(a, b, np.repeat(["w", "x", "y", "z"], 50))
    assert res.pvalue == 2 / 16


def test_cluster_permutation_monte_carlo_close_to_exact():
    rng = np.random.default_rng(21)
    g = 18  # above the exact limit of 16
    clusters = np.repeat(np.arange(g), 5)
    d = rng.normal(0.1, 0.5, g)[clusters] + rng.normal(0, 0.1, clusters.size)
    sums = np.bincount(clusters, weights=d)
    signs = 1 - 2 * ((np.arange(2**g)[:, None] >> np.arange(g)) & 1)
    exact = np.mean(np.abs(signs @ sums) >= abs(sums.sum()) - 1e-12)
    res = qs.cluster_permutation_test(np.zeros_like(d), d, clusters, n_perm=20_000, seed=3)
    assert res.method == "cluster-monte-carlo"
    assert res.pvalue == pytest.approx(exact, abs=0.01)
    assert res == qs.cluster_permutation_test(np.zeros_like(d), d, clusters, 20_000, seed=3)


def test_cluster_bootstrap_equivalence_interval_and_p_agree():
    rng = np.random.default_rng(22)
    clusters = np.repeat(np.arange(40), 25)
    d = np.where(rng.random(clusters.size) < 0.04, rng.choice([-1.0, 1.0], clusters.size), 0.0)
    for margin, alpha in itertools.product((0.005, 0.01, 0.02, 0.05), (0.01, 0.05, 0.1)):
        res = qs.cluster_bootstrap_equivalence(d, clusters, margin, alpha, 1000, seed=1)
        assert res.equivalent == (-margin < res.low and res.high < margin)
        assert res.equivalent == (res.pvalue < alpha)
        # never narrower than the zero-change floor around the observed mean
        half = qs.zero_change_bound(d.size, alpha)
        assert res.low <= d.mean() - half + 1e-12 and res.high >= d.mean() + half - 1e-12
    # without the floor, the percentile interval of the same draws as cluster_bootstrap_ci
    res = qs.cluster_bootstrap_equivalence(d, clusters, 0.05, 0.05, 1000, seed=1, value_range=None)
    ref = qs.cluster_bootstrap_ci(d, clusters, 1000, seed=1, alpha=0.10)
    assert res.low == pytest.approx(ref[0], abs=2e-3) and res.high == pytest.approx(
        ref[1], abs=2e-3
    )
    # no changed item at all: only the floor is left, and 1000 items do not resolve 0.001
    res = qs.cluster_bootstrap_equivalence(np.zeros(1000), clusters, 0.001)
    assert not res.equivalent and res.high == pytest.approx(qs.zero_change_bound(1000))


def subject_correlated(n_per: int = 50) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """4 subjects; the arm loses 14, 10, 6 and 2 items of each subject's 50, gains none."""
    subjects, base, arm = [], [], []
    for s, lost in enumerate((14, 10, 6, 2)):
        a = np.ones(n_per)
        b = a.copy()
        b[:lost] = 0
        subjects += [f"s{s}"] * n_per
        base.append(a)
        arm.append(b)
    return np.concatenate(base), np.concatenate(arm), np.array(subjects)


def test_clustered_difference_significant_on_items_but_not_on_subjects():
    a, b, subjects = subject_correlated()
    items = qs.mcnemar_test(a, b)
    assert items.pvalue < 1e-6  # 32 of 32 changed items went one way
    clusters = qs.cluster_permutation_test(a, b, subjects)
    assert clusters.pvalue == 2 / 16  # 4 subjects, all one way: the smallest p there is
    df = long_scores({"base": a, "q": b}, task="mmlu", subjects=subjects)
    # the same items: subject by subject "inconclusive", treated as independent "worse"
    _, comp = qs.compare(df, "base", n_boot=500)
    row = comp.iloc[0]
    assert row["test"] == "cluster-permutation" and row["p"] == 2 / 16
    assert row["verdict"] == "inconclusive"
    _, flat = qs.compare(df.assign(subject=None), "base", n_boot=500)
    assert flat.iloc[0]["test"] == "mcnemar-chi2" and flat.iloc[0]["verdict"] == "worse"


# --------------------------------------------------------------------------- compare end to end


@pytest.mark.parametrize("n,expected", [(2, "inconclusive"), (250, "inconclusive"),
                                        (400, "equivalent")])  # fmt: skip
def test_compare_identical_arms_need_enough_items(n, expected):
    base = (np.arange(n) % 3 == 0).astype(float)
    f1 = np.linspace(0.05, 0.95, n)
    df = pd.concat(
        [
            long_scores({"base": base, "same": base.copy()}, task="mc", metric="acc"),
            long_scores({"base": f1, "same": f1.copy()}, task="qa", metric="f1"),
        ],
        ignore_index=True,
    )
    _, comp = qs.compare(df, "base", margin=0.01, n_boot=200)
    assert comp["verdict"].tolist() == [expected, expected]
    assert (comp["eq_low"] < 0).all() and (comp["eq_high"] > 0).all()
    assert (comp["diff_ci_low"] < 0).all() and (comp["diff_ci_high"] > 0).all()
    assert comp.set_index("task").loc["mc", "eq_method"] == "tango-score"
    assert comp.set_index("task").loc["qa", "eq_method"] == "t+floor"


def test_compare_rows_pass_the_verdict_check():
    rng = np.random.default_rng(23)
    n = 600
    subjects = np.repeat([f"s{i}" for i in range(12)], n // 12)
    base = (rng.random(n) < 0.6).astype(float)
    arms = {"base": base}
    for name, flip in (("same", 0.0), ("near", 0.01), ("bad", 0.2)):
        arm = base.copy()
        arm[rng.random(n) < flip] = 0.0
        arms[name] = arm
    df = pd.concat(
        [
            long_scores(arms, task="flat"),
            long_scores(arms, task="mmlu", subjects=subjects),
            long_scores({k: v * rng.random(n) for k, v in arms.items()}, task="qa", metric="f1"),
        ],
        ignore_index=True,
    )
    _, comp = qs.compare(df, "base", margin=0.02, n_boot=300, n_perm=2000)
    assert qs.check_verdicts(comp, 0.02, 0.05) is comp
    assert set(comp["verdict"]) <= set(qs.VERDICTS)
    assert comp.set_index(["arm", "task"]).loc[("bad", "flat"), "verdict"] == "worse"
    assert (comp["equivalent"] == (comp["tost_p"] < 0.05)).all()


# --------------------------------------------------------------------------- the check


def comparison_row(**kw) -> dict:
    row = {"arm": "q", "task": "t", "metric": "acc", "verdict": "inconclusive", "diff": 0.0,
           "diff_ci_low": -0.01, "diff_ci_high": 0.01, "p_holm": 0.5, "eq_low": -0.008,
           "eq_high": 0.008}  # fmt: skip
    return row | kw


@pytest.mark.parametrize(
    "row,message",
    [
        (comparison_row(verdict="worse", diff=-0.03, p_holm=7e-6), "contains 0"),
        (
            comparison_row(
                verdict="better",
                diff=0.03,
                diff_ci_low=0.01,
                diff_ci_high=0.05,
                higher_is_better=False,
            ),
            "other side",
        ),
        (
            comparison_row(
                verdict="worse", diff=-0.03, diff_ci_low=-0.05, diff_ci_high=-0.01, p_holm=0.2
            ),
            "not below 0.05",
        ),
        (comparison_row(verdict="equivalent", eq_low=-0.012, eq_high=0.004), "not inside"),
        (comparison_row(verdict="equivalent", eq_low=-0.004, eq_high=0.01), "not inside"),
        (comparison_row(verdict="equivalent", eq_low=math.nan, eq_high=math.nan), "not inside"),
        (
            comparison_row(verdict="better", diff_ci_low=math.nan, diff_ci_high=math.nan),
            "contains 0",
        ),
    ],
)
def test_check_verdicts_raises_on_rows_their_intervals_contradict(row, message):
    good = comparison_row(arm="ok")
    table = pd.DataFrame([good, row])
    with pytest.raises(ValueError, match=message) as err:
        qs.check_verdicts(table, 0.01, 0.05)
    assert "arm 'q', task 't', metric 'acc'" in str(err.value)
    assert "'ok'" not in str(err.value)


def test_check_verdicts_accepts_backed_and_oriented_rows():
    table = pd.DataFrame(
        [
            comparison_row(verdict="equivalent"),
            comparison_row(
                verdict="worse", diff=-0.03, diff_ci_low=-0.05, diff_ci_high=-0.01, p_holm=0.001
            ),
            # lower is better (perplexity): a negative difference is the gain
            comparison_row(
                verdict="better",
                diff=-0.03,
                diff_ci_low=-0.05,
                diff_ci_high=-0.01,
                p_holm=0.001,
                higher_is_better=False,
            ),
            comparison_row(
                verdict="missing",
                diff=math.nan,
                diff_ci_low=math.nan,
                diff_ci_high=math.nan,
                eq_low=math.nan,
                eq_high=math.nan,
            ),
        ]
    )
    table["higher_is_better"] = table["higher_is_better"].fillna(True)
    assert qs.check_verdicts(table, 0.01, 0.05) is table


# --------------------------------------------------------------------------- simulations


def false_equivalence_bound(reps: int) -> float:
    """alpha plus three Monte Carlo standard errors of a rate estimated from reps draws."""
    return ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / reps)


@pytest.mark.parametrize("n,margin", [(50, 0.01), (20, 0.025), (400, 0.01), (2000, 0.01)])
def test_binary_false_equivalence_rate_at_twice_the_margin(n, margin):
    # the arm loses 2 * margin: P(baseline right, arm wrong) = 2 m + g, the reverse g, with
    # g = 0 for the small cases (no item gained: zero discordance is frequent there)
    reps = 400
    rng = np.random.default_rng(n)
    gain = 0.0 if n < 100 else 0.01
    probs = [gain, 2 * margin + gain, 1 - 2 * margin - 2 * gain]  # +1, -1, 0
    counts = rng.multinomial(n, probs, size=reps)
    new_rule = [qs.tango_equivalence(int(b), int(c), n, margin) for b, c, _ in counts]
    assert np.mean([r.equivalent for r in new_rule]) <= false_equivalence_bound(reps)
    if n < 100:
        # the old rule (t TOST, zero variance = equivalent) said "equivalent" whenever no item
        # changed: about a third of the time here (0.98^50 = 0.36, 0.95^20 = 0.36)
        diffs = [np.repeat([1.0, -1.0, 0.0], row) for row in counts]
        old_rule = [qs.tost(d, margin, value_range=None) for d in diffs]
        assert np.mean([r.equivalent for r in old_rule]) > 0.25


@pytest.mark.parametrize("n,margin,changed", [(50, 0.01, 0.04), (20, 0.025, 0.1),
                                              (400, 0.025, 0.25)])  # fmt: skip
def test_continuous_false_equivalence_rate_at_twice_the_margin(n, margin, changed):
    # an F1-like score in [0, 1] that a share of items loses (uniformly up to twice the mean
    # loss, at most 1): on average the arm is 2 * margin worse
    reps = 300
    rng = np.random.default_rng(100 + n)
    mean_loss = 2 * margin / changed
    assert 2 * mean_loss <= 1
    rates = []
    for _ in range(reps):
        loss = rng.uniform(0, 2 * mean_loss, n) * (rng.random(n) < changed)
        rates.append(qs.tost(-loss, margin).equivalent)
    assert np.mean(rates) <= false_equivalence_bound(reps)
