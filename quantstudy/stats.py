"""Statistics for comparing quantized arms with the baseline arm, example by example.

Every arm of a study answers the same documents of each lm-eval task, so arms are compared
*paired*: per document, the arm's score minus the baseline's score. The input everywhere is the
long table of per-example scores with columns ``task, doc_id, doc_hash, arm, metric, value,
subject`` (``subject`` may be missing; for MMLU-like groups it is the subtask).

What is computed, per (arm, task, metric):

* a score with a 95 % confidence interval: Wilson for binary metrics, a percentile bootstrap of
  the mean for continuous ones, and a cluster bootstrap (whole subjects resampled) when the task
  has subjects;
* against the baseline: the mean paired difference (arm - baseline) with a paired bootstrap CI,
  a test of "no difference" (McNemar for binary metrics, a sign-flip permutation test for
  continuous ones), Holm-adjusted p-values, a TOST equivalence test against +/- ``margin``, the
  minimum detectable difference, and a verdict: equivalent, better, worse, inconclusive or
  missing.

All functions are pure and deterministic given their seed.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

__all__ = [
    "BINARY_VALUES",
    "COMPARISON_COLUMNS",
    "MCNEMAR_EXACT_MAX_DISCORDANT",
    "PERMUTATION_EXACT_MAX_NONZERO",
    "RULES",
    "SCORE_COLUMNS",
    "VERDICTS",
    "DecisionRow",
    "McNemarResult",
    "PermutationResult",
    "Recommendation",
    "TostResult",
    "Verdict",
    "bootstrap_ci",
    "cluster_bootstrap_ci",
    "compare",
    "holm",
    "is_binary",
    "mcnemar_test",
    "min_detectable_difference",
    "pair",
    "paired_bootstrap_diff_ci",
    "paired_frame",
    "paired_permutation_test",
    "recommend",
    "task_verdicts",
    "tost",
    "verdict",
    "wilson_ci",
]

Seed = int | np.random.SeedSequence | np.random.Generator

BINARY_VALUES = (0.0, 1.0)
"""The values a binary metric (acc, acc_norm, exact_match) takes."""

MCNEMAR_EXACT_MAX_DISCORDANT = 25
"""McNemar's test is exact up to this many discordant pairs, corrected chi-square above."""

PERMUTATION_EXACT_MAX_NONZERO = 16
"""The permutation test enumerates all 2^k sign flips up to this many nonzero differences."""

VERDICTS = ("equivalent", "better", "worse", "inconclusive", "missing")
"""Every verdict a comparison can have."""

RULES = ("smallest-equivalent", "smallest-not-worse", "fastest-equivalent")
"""Decision rules understood by :func:`recommend`."""

SCORE_COLUMNS = ("arm", "task", "metric", "n", "mean", "ci_low", "ci_high", "ci_method")
"""Columns of the ``scores`` table returned by :func:`compare`."""

COMPARISON_COLUMNS = (
    "arm",
    "task",
    "metric",
    "n",
    "baseline_mean",
    "arm_mean",
    "diff",
    "diff_ci_low",
    "diff_ci_high",
    "test",
    "p",
    "p_holm",
    "tost_p",
    "equivalent",
    "verdict",
    "mdd",
)
"""Columns of the ``comparisons`` table returned by :func:`compare`."""

_REQUIRED_COLUMNS = ("task", "doc_id", "doc_hash", "arm", "metric", "value", "subject")
_NO_SUBJECT = "\x00no-subject"
_BOOT_CHUNK_ELEMENTS = 4_000_000


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class McNemarResult:
    """McNemar's test on paired binary outcomes.

    ``n01`` counts items the baseline got wrong and the arm right, ``n10`` the reverse.
    ``statistic`` is min(n01, n10) for the exact test and the corrected chi-square otherwise.
    """

    statistic: float
    pvalue: float
    n01: int
    n10: int
    method: str  # "mcnemar-exact" | "mcnemar-chi2"


@dataclass(frozen=True)
class PermutationResult:
    """Two-sided sign-flip permutation test of the mean paired difference (b - a)."""

    statistic: float  # mean(b - a)
    pvalue: float
    n_nonzero: int
    n_permutations: int  # sign patterns examined: 2^n_nonzero when exact
    method: str  # "exact" | "monte-carlo"


@dataclass(frozen=True)
class TostResult:
    """Paired TOST equivalence test of the mean difference against (-margin, +margin)."""

    diff: float
    margin: float
    p_lower: float  # H0: mean <= -margin
    p_upper: float  # H0: mean >= +margin
    pvalue: float  # max(p_lower, p_upper)
    equivalent: bool
    df: float


@dataclass(frozen=True)
class Verdict:
    """A comparison's verdict with the evidence behind it."""

    verdict: str
    diff: float
    ci_low: float
    ci_high: float
    p: float
    p_holm: float
    tost_p: float


@dataclass(frozen=True)
class DecisionRow:
    """One arm as :func:`recommend` sees it: its footprint, speed and verdict per task."""

    arm: str
    memory_bytes: float
    speed_ratio: float = math.nan  # arm throughput / baseline throughput; NaN when unmeasured
    verdicts: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Recommendation:
    """The arm chosen by a decision rule (None when no arm qualifies) and why."""

    arm: str | None
    rule: str
    reason: str
    candidates: tuple[str, ...] = ()


# --------------------------------------------------------------------------- helpers


def _rng(seed: Seed) -> np.random.Generator:
    """A numpy Generator from an int, SeedSequence or Generator."""
    return np.random.default_rng(seed)


def _subseed(seed: int, *keys: object) -> np.random.SeedSequence:
    """A seed for one named sub-computation, stable whatever else is computed alongside."""
    spawn_key = tuple(zlib.crc32(str(k).encode()) for k in keys)
    return np.random.SeedSequence(seed, spawn_key=spawn_key)


def _as_float_array(values: Any) -> np.ndarray:
    """A 1-d float array of the values."""
    return np.asarray(values, dtype=float).ravel()


def _check_alpha(alpha: float) -> None:
    """Raise unless 0 < alpha < 1."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


def _cluster_codes(clusters: Any) -> np.ndarray:
    """Integer cluster codes; missing labels become singleton clusters."""
    codes, uniques = pd.factorize(pd.Series(np.asarray(clusters, dtype=object).ravel()))
    codes = np.asarray(codes, dtype=np.int64)
    missing = codes < 0
    if missing.any():
        codes = codes.copy()
        codes[missing] = len(uniques) + np.arange(int(missing.sum()))
    return codes


def _bootstrap_ratio_means(
    sums: np.ndarray, sizes: np.ndarray, n_boot: int, rng: np.random.Generator
) -> np.ndarray:
    """Means of n_boot resamples (with replacement) of the units whose sums and sizes are given."""
    g = len(sums)
    units, inverse = np.unique(np.column_stack([sums, sizes]), axis=0, return_inverse=True)
    if len(units) * 4 <= g:
        # few distinct units (binary scores, paired differences of binary scores): a resample
        # is fully described by how often each distinct unit is drawn, a multinomial draw
        freq = np.bincount(inverse.ravel(), minlength=len(units)) / g
        counts = rng.multinomial(g, freq, size=n_boot).astype(float)
        return (counts @ units[:, 0]) / (counts @ units[:, 1])
    out = np.empty(n_boot)
    chunk = max(1, _BOOT_CHUNK_ELEMENTS // max(g, 1))
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        idx = rng.integers(0, g, size=(stop - start, g))
        out[start:stop] = sums[idx].sum(axis=1) / sizes[idx].sum(axis=1)
    return out


def _percentile_interval(boot: np.ndarray, alpha: float) -> tuple[float, float]:
    """The (alpha/2, 1 - alpha/2) percentiles of the bootstrap distribution."""
    low, high = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


# --------------------------------------------------------------------------- intervals


def is_binary(values: Any) -> bool:
    """Whether every value is 0 or 1 (an empty input is not binary)."""
    arr = _as_float_array(values)
    return arr.size > 0 and bool(np.isin(arr, BINARY_VALUES).all())


def wilson_ci(successes: float, n: float, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (NaNs when n = 0)."""
    _check_alpha(alpha)
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return (math.nan, math.nan)
    z = float(sps.norm.isf(alpha / 2))
    p = successes / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (max(0.0, center - half), min(1.0, center + half))


def bootstrap_ci(
    values: Any, n_boot: int = 2000, seed: Seed = 0, alpha: float = 0.05
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean, resampling items with replacement (NaNs when empty)."""
    _check_alpha(alpha)
    arr = _as_float_array(values)
    if arr.size == 0:
        return (math.nan, math.nan)
    boot = _bootstrap_ratio_means(arr, np.ones_like(arr), n_boot, _rng(seed))
    return _percentile_interval(boot, alpha)


def cluster_bootstrap_ci(
    values: Any, clusters: Any, n_boot: int = 2000, seed: Seed = 0, alpha: float = 0.05
) -> tuple[float, float]:
    """Percentile bootstrap CI of the item mean, resampling whole clusters with replacement.

    Each resample draws as many clusters as there are, with replacement, and takes the mean over
    all items of the drawn clusters. Items whose cluster label is missing are clusters of one.
    With one item per cluster this is :func:`bootstrap_ci` (same seed, same result).
    """
    _check_alpha(alpha)
    arr = _as_float_array(values)
    codes = _cluster_codes(clusters)
    if codes.size != arr.size:
        raise ValueError(f"values ({arr.size}) and clusters ({codes.size}) differ in length")
    if arr.size == 0:
        return (math.nan, math.nan)
    g = int(codes.max()) + 1
    sums = np.bincount(codes, weights=arr, minlength=g)
    sizes = np.bincount(codes, minlength=g).astype(float)
    boot = _bootstrap_ratio_means(sums, sizes, n_boot, _rng(seed))
    return _percentile_interval(boot, alpha)


# --------------------------------------------------------------------------- pairing


def paired_frame(df: pd.DataFrame, task: str, metric: str, arm: str, baseline: str) -> pd.DataFrame:
    """The arm's and the baseline's scores on one (task, metric), aligned item by item.

    Items are identified by (subject, doc_id), since lm-eval numbers documents per subtask.
    Returns columns ``subject, doc_id, doc_hash, baseline, arm``, sorted by item. Raises
    ValueError when either arm has no rows, an item appears twice in one arm, or the two arms did
    not see the same items (different item sets, or a doc_hash that differs for one item).
    """
    sel = df[(df["task"] == task) & (df["metric"] == metric)]
    sides = {}
    for role, name in (("baseline", baseline), ("arm", arm)):
        rows = sel[sel["arm"] == name]
        if rows.empty:
            raise ValueError(f"no rows for arm {name!r} on task {task!r}, metric {metric!r}")
        subject = rows["subject"].astype(object).where(rows["subject"].notna(), _NO_SUBJECT)
        keyed = pd.DataFrame(
            {
                "subject": subject.to_numpy(),
                "doc_id": rows["doc_id"].to_numpy(),
                "doc_hash": rows["doc_hash"].astype(object).to_numpy(),
                "value": rows["value"].to_numpy(dtype=float),
            }
        ).set_index(["subject", "doc_id"])
        if not keyed.index.is_unique:
            dup = keyed.index[keyed.index.duplicated()][0]
            raise ValueError(
                f"arm {name!r} has more than one row for item {dup} on task {task!r}, "
                f"metric {metric!r}"
            )
        sides[role] = keyed.sort_index()

    base, other = sides["baseline"], sides["arm"]
    only_base = base.index.difference(other.index)
    only_arm = other.index.difference(base.index)
    if len(only_base) or len(only_arm):
        raise ValueError(
            f"arms saw different items: not a paired comparison (task {task!r}, metric "
            f"{metric!r}: {len(only_base)} items only in {baseline!r}, e.g. "
            f"{list(only_base[:3])}; {len(only_arm)} only in {arm!r}, e.g. {list(only_arm[:3])})"
        )
    other = other.reindex(base.index)
    hb, ha = base["doc_hash"], other["doc_hash"]
    differs = ~((hb == ha) | (hb.isna() & ha.isna()))
    if differs.any():
        bad = list(base.index[differs.to_numpy()][:3])
        raise ValueError(
            f"arms saw different items: not a paired comparison (task {task!r}, metric "
            f"{metric!r}: doc_hash differs between {baseline!r} and {arm!r} for "
            f"{int(differs.sum())} items, e.g. {bad})"
        )
    out = pd.DataFrame(
        {
            "doc_hash": hb.to_numpy(),
            "baseline": base["value"].to_numpy(),
            "arm": other["value"].to_numpy(),
        },
        index=base.index,
    ).reset_index()
    out["subject"] = out["subject"].where(out["subject"] != _NO_SUBJECT, None)
    return out[["subject", "doc_id", "doc_hash", "baseline", "arm"]]


def pair(
    df: pd.DataFrame, task: str, metric: str, arm: str, baseline: str
) -> tuple[np.ndarray, np.ndarray]:
    """The baseline's and the arm's scores on one (task, metric), aligned item by item.

    See :func:`paired_frame` for how items are matched and when ValueError is raised.
    """
    frame = paired_frame(df, task, metric, arm, baseline)
    return frame["baseline"].to_numpy(dtype=float), frame["arm"].to_numpy(dtype=float)


# --------------------------------------------------------------------------- paired tests


def paired_bootstrap_diff_ci(
    a: Any,
    b: Any,
    n_boot: int = 2000,
    seed: Seed = 0,
    alpha: float = 0.05,
    clusters: Any | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap CI of mean(b - a), resampling pairs (whole clusters when given)."""
    a_arr, b_arr = _as_float_array(a), _as_float_array(b)
    if a_arr.shape != b_arr.shape:
        raise ValueError(f"a ({a_arr.size}) and b ({b_arr.size}) differ in length")
    diffs = b_arr - a_arr
    if clusters is None:
        return bootstrap_ci(diffs, n_boot=n_boot, seed=seed, alpha=alpha)
    return cluster_bootstrap_ci(diffs, clusters, n_boot=n_boot, seed=seed, alpha=alpha)


def mcnemar_test(a: Any, b: Any) -> McNemarResult:
    """McNemar's test that two paired binary outcomes (a = baseline, b = arm) have equal means.

    Exact two-sided binomial test on the discordant pairs when there are at most
    MCNEMAR_EXACT_MAX_DISCORDANT of them; otherwise the chi-square test with continuity
    correction, (max(|n01 - n10| - 1, 0))^2 / (n01 + n10) on 1 df. Up to the clipping at 0
    (which makes p = 1 when n01 = n10), this is statsmodels' ``mcnemar(table, exact=...,
    correction=True)``.
    """
    a_arr, b_arr = _as_float_array(a), _as_float_array(b)
    if a_arr.shape != b_arr.shape:
        raise ValueError(f"a ({a_arr.size}) and b ({b_arr.size}) differ in length")
    if a_arr.size and not (is_binary(a_arr) and is_binary(b_arr)):
        raise ValueError("McNemar's test needs binary (0/1) outcomes")
    n01 = int(np.sum((a_arr == 0) & (b_arr == 1)))
    n10 = int(np.sum((a_arr == 1) & (b_arr == 0)))
    n_disc = n01 + n10
    if n_disc <= MCNEMAR_EXACT_MAX_DISCORDANT:
        statistic = float(min(n01, n10))
        pvalue = (
            1.0 if n_disc == 0 else min(1.0, 2.0 * float(sps.binom.cdf(statistic, n_disc, 0.5)))
        )
        return McNemarResult(statistic, pvalue, n01, n10, "mcnemar-exact")
    statistic = max(abs(n01 - n10) - 1.0, 0.0) ** 2 / n_disc
    pvalue = float(sps.chi2.sf(statistic, 1))
    return McNemarResult(float(statistic), pvalue, n01, n10, "mcnemar-chi2")


def paired_permutation_test(
    a: Any, b: Any, n_perm: int = 10_000, seed: Seed = 0
) -> PermutationResult:
    """Two-sided sign-flip permutation test that mean(b - a) is zero.

    Under the null every paired difference is as likely to have either sign. The p-value is the
    share of sign patterns whose |sum| is at least the observed |sum|. Zero differences do not
    change under a flip, so only the k nonzero ones are flipped: all 2^k patterns when
    k <= PERMUTATION_EXACT_MAX_NONZERO, otherwise n_perm random patterns with p = (hits + 1) /
    (n_perm + 1). With no nonzero difference p = 1.
    """
    a_arr, b_arr = _as_float_array(a), _as_float_array(b)
    if a_arr.shape != b_arr.shape:
        raise ValueError(f"a ({a_arr.size}) and b ({b_arr.size}) differ in length")
    diffs = b_arr - a_arr
    mean_diff = float(diffs.mean()) if diffs.size else math.nan
    d = diffs[diffs != 0]
    k = d.size
    if k == 0:
        return PermutationResult(mean_diff, 1.0, 0, 1, "exact")
    observed = abs(float(d.sum()))
    total = float(d.sum())
    tol = 1e-9 * float(np.abs(d).sum())
    if k <= PERMUTATION_EXACT_MAX_NONZERO:
        bits = (np.arange(2**k, dtype=np.int64)[:, None] >> np.arange(k)) & 1
        # flipping the items in `bits` turns the sum into total - 2 * (flipped sum)
        sums = total - 2.0 * (bits @ d)
        hits = int(np.sum(np.abs(sums) >= observed - tol))
        return PermutationResult(mean_diff, hits / 2**k, k, 2**k, "exact")
    rng = _rng(seed)
    hits = 0
    chunk = max(1, _BOOT_CHUNK_ELEMENTS // k)
    for start in range(0, n_perm, chunk):
        rows = min(chunk, n_perm - start)
        packed = rng.integers(0, 256, size=(rows, (k + 7) // 8), dtype=np.uint8)
        bits = np.unpackbits(packed, axis=1, count=k).astype(float)
        sums = total - 2.0 * (bits @ d)
        hits += int(np.sum(np.abs(sums) >= observed - tol))
    return PermutationResult(mean_diff, (hits + 1) / (n_perm + 1), k, n_perm, "monte-carlo")


def holm(pvalues: Any) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values, in the input order.

    Step-down: the i-th smallest of m p-values is multiplied by (m - i + 1), adjusted values are
    made non-decreasing in that order and capped at 1. NaN p-values stay NaN and do not count
    towards m.
    """
    p = _as_float_array(pvalues)
    out = np.full(p.shape, math.nan)
    ok = ~np.isnan(p)
    m = int(ok.sum())
    if m == 0:
        return out
    pv = p[ok]
    order = np.argsort(pv, kind="stable")
    scaled = pv[order] * (m - np.arange(m))
    adjusted = np.minimum(np.maximum.accumulate(scaled), 1.0)
    res = np.empty(m)
    res[order] = adjusted
    out[ok] = res
    return out


def tost(diffs: Any, margin: float, alpha: float = 0.05) -> TostResult:
    """Paired TOST: is the mean difference within (-margin, +margin)?

    Two one-sided one-sample t-tests on the paired differences (n - 1 df): H0 mean <= -margin
    and H0 mean >= +margin; the TOST p-value is the larger of the two, and the difference is
    declared equivalent when it is below alpha (same as statsmodels' ``ttost_paired``). ``margin``
    is in the metric's units (0.01 = one accuracy point). When all differences are equal (zero
    variance) the mean is known exactly: p = 0 if it lies strictly inside the margin, else 1.
    With fewer than two differences nothing can be said: p = NaN, not equivalent.
    """
    _check_alpha(alpha)
    if not margin > 0:
        raise ValueError(f"margin must be positive, got {margin}")
    d = _as_float_array(diffs)
    n = d.size
    if n == 0:
        return TostResult(math.nan, margin, math.nan, math.nan, math.nan, False, math.nan)
    mean = float(d.mean())
    if n < 2:
        return TostResult(mean, margin, math.nan, math.nan, math.nan, False, math.nan)
    df = float(n - 1)
    se = float(d.std(ddof=1)) / math.sqrt(n)
    if se == 0.0:
        p_lower = 0.0 if mean > -margin else 1.0
        p_upper = 0.0 if mean < margin else 1.0
    else:
        p_lower = float(sps.t.sf((mean + margin) / se, df))
        p_upper = float(sps.t.cdf((mean - margin) / se, df))
    pvalue = max(p_lower, p_upper)
    return TostResult(mean, margin, p_lower, p_upper, pvalue, bool(pvalue < alpha), df)


def verdict(
    diff: float,
    ci: tuple[float, float],
    p: float,
    p_holm: float,
    tost_p: float,
    alpha: float = 0.05,
) -> Verdict:
    """The verdict on one arm-vs-baseline comparison, with its evidence.

    "equivalent" when the TOST p-value is below alpha (the difference is shown to lie within the
    margin; this takes precedence over a significant but smaller-than-margin difference), else
    "better" or "worse" (by the sign of diff) when the Holm-adjusted p-value is below alpha, else
    "inconclusive". NaN evidence never yields a decision.
    """
    _check_alpha(alpha)
    low, high = ci
    if tost_p < alpha:  # False for NaN
        label = "equivalent"
    elif p_holm < alpha and diff != 0 and not math.isnan(diff):
        label = "better" if diff > 0 else "worse"
    else:
        label = "inconclusive"
    return Verdict(
        label, float(diff), float(low), float(high), float(p), float(p_holm), float(tost_p)
    )


def min_detectable_difference(sd_diff: Any, n: Any, alpha: float = 0.05, power: float = 0.8) -> Any:
    """Smallest true mean paired difference a two-sided test at level alpha detects with `power`.

    Normal approximation for a paired (one-sample) test of the differences:
    MDD = (z_{1-alpha/2} + z_{power}) * sd_diff / sqrt(n), with sd_diff the standard deviation of
    the per-item differences. At alpha = 0.05 and power = 0.8 the factor is 2.80. The chance of
    rejecting in the wrong tail is ignored (it is below 1e-5 at these settings). Works on
    scalars and arrays; NaN where n < 1.
    """
    _check_alpha(alpha)
    if not 0.0 < power < 1.0:
        raise ValueError(f"power must be in (0, 1), got {power}")
    factor = float(sps.norm.isf(alpha / 2) + sps.norm.ppf(power))
    sd = np.asarray(sd_diff, dtype=float)
    nn = np.asarray(n, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(nn >= 1, factor * sd / np.sqrt(np.where(nn >= 1, nn, 1.0)), math.nan)
    return float(out) if out.ndim == 0 else out


# --------------------------------------------------------------------------- study tables


def _validate_scores(df: pd.DataFrame) -> None:
    """Raise unless df has the per-example score columns and finite values."""
    missing = [c for c in _REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"per-example scores lack columns {missing}")
    values = pd.to_numeric(df["value"], errors="coerce").to_numpy(dtype=float)
    if not np.isfinite(values).all():
        raise ValueError("per-example scores hold non-numeric or non-finite values")


def _has_subjects(rows: pd.DataFrame) -> bool:
    """Whether the rows carry at least two distinct subjects (a clustered task)."""
    return rows["subject"].dropna().nunique() >= 2


def _score_row(
    rows: pd.DataFrame, binary: bool, clustered: bool, n_boot: int, seed: Seed, alpha: float
) -> dict[str, Any]:
    """n, mean and CI of one arm's scores on one (task, metric)."""
    values = rows["value"].to_numpy(dtype=float)
    n = values.size
    if clustered:
        low, high = cluster_bootstrap_ci(values, rows["subject"], n_boot, seed, alpha)
        method = "cluster-bootstrap"
    elif binary:
        low, high = wilson_ci(float(values.sum()), n, alpha)
        method = "wilson"
    else:
        low, high = bootstrap_ci(values, n_boot, seed, alpha)
        method = "bootstrap"
    return {
        "n": n,
        "mean": float(values.mean()),
        "ci_low": low,
        "ci_high": high,
        "ci_method": method,
    }


def _missing_comparison(arm: str, task: str, metric: str | None) -> dict[str, Any]:
    """A comparisons row for an arm/task/metric with no paired data."""
    return {
        "arm": arm,
        "task": task,
        "metric": metric,
        "n": 0,
        "baseline_mean": math.nan,
        "arm_mean": math.nan,
        "diff": math.nan,
        "diff_ci_low": math.nan,
        "diff_ci_high": math.nan,
        "test": None,
        "p": math.nan,
        "p_holm": math.nan,
        "tost_p": math.nan,
        "equivalent": pd.NA,
        "verdict": "missing",
        "mdd": math.nan,
    }


def _comparison_row(
    frame: pd.DataFrame,
    arm: str,
    task: str,
    metric: str,
    binary: bool,
    clustered: bool,
    margin: float,
    alpha: float,
    n_boot: int,
    n_perm: int,
    seed: int,
) -> dict[str, Any]:
    """Everything but the Holm adjustment and verdict for one paired comparison."""
    a = frame["baseline"].to_numpy(dtype=float)
    b = frame["arm"].to_numpy(dtype=float)
    diffs = b - a
    n = diffs.size
    clusters = frame["subject"] if clustered else None
    low, high = paired_bootstrap_diff_ci(
        a, b, n_boot, _subseed(seed, "diff", arm, task, metric), alpha, clusters
    )
    if binary:
        mc = mcnemar_test(a, b)
        test, p = mc.method, mc.pvalue
    else:
        perm = paired_permutation_test(a, b, n_perm, _subseed(seed, "perm", arm, task, metric))
        test, p = "permutation", perm.pvalue
    eq = tost(diffs, margin, alpha)
    sd = float(diffs.std(ddof=1)) if n >= 2 else math.nan
    return {
        "arm": arm,
        "task": task,
        "metric": metric,
        "n": n,
        "baseline_mean": float(a.mean()),
        "arm_mean": float(b.mean()),
        "diff": float(diffs.mean()),
        "diff_ci_low": low,
        "diff_ci_high": high,
        "test": test,
        "p": p,
        "p_holm": math.nan,
        "tost_p": eq.pvalue,
        "equivalent": eq.equivalent,
        "verdict": None,
        "mdd": min_detectable_difference(sd, n, alpha) if n >= 2 else math.nan,
    }


def compare(
    df: pd.DataFrame,
    baseline: str,
    margin: float = 0.01,
    alpha: float = 0.05,
    n_boot: int = 2000,
    seed: int = 0,
    *,
    n_perm: int = 10_000,
    arms: Sequence[str] | None = None,
    tasks: Sequence[str] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-arm scores and arm-vs-baseline comparisons of a study's per-example scores.

    Returns ``(scores, comparisons)`` with columns SCORE_COLUMNS and COMPARISON_COLUMNS.

    ``scores`` has one row per (arm, task, metric) with data. Its CI is a cluster bootstrap over
    subjects when the task has at least two subjects, else Wilson for a binary metric (all values
    0/1, judged over all arms of the task), else a percentile bootstrap.

    ``comparisons`` has one row per non-baseline arm and (task, metric) of the task, items paired
    by :func:`pair` (a ValueError from it, e.g. different items, propagates). ``diff`` is arm
    minus baseline; its CI is a paired (cluster, when the task has subjects) bootstrap. Binary
    metrics are tested with McNemar (exact up to 25 discordant pairs), continuous ones with the
    sign-flip permutation test. ``tost_p`` is the paired TOST against +/- ``margin`` (metric
    units). ``mdd`` is the minimum detectable difference at 80 % power from the sd of the
    differences. ``verdict`` is from :func:`verdict`.

    Multiplicity: Holm's correction is applied per (task, metric) family, across the arms
    compared with the baseline on it. Tasks answer separate questions and are reported
    separately; the metrics of one task (acc, acc_norm) are near-duplicate readings of the same
    answers, so they are not pooled into one family either. TOST p-values are not adjusted
    (each equivalence claim is an intersection-union test).

    Arms or tasks without data are not dropped: a non-baseline arm lacking rows for a (task,
    metric) — or a task whose baseline rows are absent — gets a row with verdict "missing"
    (n = 0, NaN evidence); a task with no rows at all gets one such row per arm with metric None.
    ``arms`` and ``tasks`` list what is expected (default: those present, in order of first
    appearance); the baseline is never compared with itself.

    Random draws are seeded per (purpose, arm, task, metric) from ``seed``, so a result does not
    change when other arms or tasks are added.
    """
    _check_alpha(alpha)
    _validate_scores(df)
    data = df.copy()
    data["value"] = pd.to_numeric(data["value"]).astype(float)
    arm_list = list(dict.fromkeys(arms if arms is not None else data["arm"].tolist()))
    if baseline not in arm_list:
        arm_list.insert(0, baseline)
    task_list = list(dict.fromkeys(tasks if tasks is not None else data["task"].tolist()))
    data = data[data["arm"].isin(arm_list) & data["task"].isin(task_list)]

    score_rows: list[dict[str, Any]] = []
    comparison_rows: list[dict[str, Any]] = []
    for task in task_list:
        task_rows = data[data["task"] == task]
        clustered = _has_subjects(task_rows)
        metrics = sorted(task_rows["metric"].unique().tolist()) or [None]
        for metric in metrics:
            if metric is None:
                comparison_rows += [
                    _missing_comparison(a, task, None) for a in arm_list if a != baseline
                ]
                continue
            rows = task_rows[task_rows["metric"] == metric]
            binary = is_binary(rows["value"])
            present = set(rows["arm"].unique())
            for arm in arm_list:
                arm_rows = rows[rows["arm"] == arm]
                if not arm_rows.empty:
                    ss = _subseed(seed, "score", arm, task, metric)
                    score_rows.append(
                        {"arm": arm, "task": task, "metric": metric}
                        | _score_row(arm_rows, binary, clustered, n_boot, ss, alpha)
                    )
            family: list[dict[str, Any]] = []
            for arm in arm_list:
                if arm == baseline:
                    continue
                if baseline not in present or arm not in present:
                    family.append(_missing_comparison(arm, task, metric))
                    continue
                frame = paired_frame(rows, task, metric, arm, baseline)
                family.append(
                    _comparison_row(
                        frame,
                        arm,
                        task,
                        metric,
                        binary,
                        clustered,
                        margin,
                        alpha,
                        n_boot,
                        n_perm,
                        seed,
                    )
                )
            adjusted = holm([r["p"] for r in family])
            for r, p_adj in zip(family, adjusted, strict=True):
                if r["verdict"] == "missing":
                    continue
                r["p_holm"] = float(p_adj)
                r["verdict"] = verdict(
                    r["diff"],
                    (r["diff_ci_low"], r["diff_ci_high"]),
                    r["p"],
                    r["p_holm"],
                    r["tost_p"],
                    alpha,
                ).verdict
            comparison_rows += family

    scores = pd.DataFrame(score_rows, columns=list(SCORE_COLUMNS))
    comparisons = pd.DataFrame(comparison_rows, columns=list(COMPARISON_COLUMNS))
    scores["n"] = scores["n"].astype("int64")
    comparisons["n"] = comparisons["n"].astype("int64")
    comparisons["equivalent"] = comparisons["equivalent"].astype("boolean")
    return scores, comparisons


# --------------------------------------------------------------------------- decisions

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


def _fmt_bytes(n: float) -> str:
    """A byte count in GiB/MiB."""
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def recommend(decision_rows: Any, rule: str) -> Recommendation:
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
    """
    if rule not in RULES:
        raise ValueError(f"unknown decision rule {rule!r}; known rules: {', '.join(RULES)}")
    rows = [r for r in _as_decision_rows(decision_rows) if r.verdicts]
    if not rows:
        return Recommendation(None, rule, "no arm has verdicts to decide on")
    all_tasks = sorted({t for r in rows for t in r.verdicts})
    ok_labels = (
        {"equivalent", "better"}
        if rule != "smallest-not-worse"
        else {"equivalent", "better", "inconclusive"}
    )
    need = "equivalent or better" if rule != "smallest-not-worse" else "not worse (and not missing)"

    def failures(r: DecisionRow) -> list[str]:
        return [
            f"{r.verdicts.get(t, 'missing')} on {t}"
            for t in all_tasks
            if r.verdicts.get(t, "missing") not in ok_labels
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
            f"{best.arm}: smallest memory ({_fmt_bytes(best.memory_bytes)}) of "
            f"{len(eligible)} arm(s) {need} on all {len(all_tasks)} tasks"
        )
    return Recommendation(best.arm, rule, reason, tuple(r.arm for r in eligible))
