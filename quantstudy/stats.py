"""Statistics for comparing quantized arms with the baseline arm, example by example.

Every arm of a study answers the same documents of each lm-eval task, so arms are compared
*paired*: per document, the arm's score minus the baseline's score. The input everywhere is the
long table of per-example scores with columns ``task, doc_id, doc_hash, arm, metric, value,
subject`` (``subject`` may be missing; for MMLU-like groups it is the subtask).

What is computed, per (arm, task, metric):

* a score with a 95 % confidence interval: Wilson for binary metrics, a percentile bootstrap of
  the mean for continuous ones, and a cluster bootstrap (whole subjects resampled) when the task
  has subjects;
* against the baseline: the mean paired difference (arm - baseline) with a (1 - alpha) CI, a
  test of "no difference", Holm-adjusted p-values, a (1 - 2 alpha) equivalence interval judged
  against +/- ``margin`` (TOST at level alpha), the minimum detectable difference, and a
  verdict: equivalent, better, worse, inconclusive or missing. The methods depend on the data:

  - binary metric (0/1): McNemar's test; Tango's score interval for the difference of paired
    proportions, both as the CI and as the equivalence interval;
  - continuous metric (F1): the sign-flip permutation test; a bootstrap CI and a t-interval for
    equivalence, each widened to at least the zero-change floor;
  - a task with subjects (MMLU): a subject-level sign-flip permutation test; cluster bootstrap
    intervals (whole subjects resampled), widened to at least the zero-change floor.

  - an extraction task (items scored with counts tp, fp, fn; quantstudy.extraction): its
    corpus metrics micro-F1, precision and recall pool the counts over items; intervals
    resample items and pool again, the test swaps the two arms' answers item by item.

  None of the intervals collapses when no item changed (zero discordance, zero variance): n
  identical items are equivalent at margin m only when n is about 3/m or more (see
  :func:`tango_ci` and :func:`zero_change_bound`). A verdict and its intervals always agree:
  "better"/"worse" need the CI to exclude 0, "equivalent" needs the equivalence interval inside
  the margin (:func:`verdict`, enforced on every table by :func:`check_verdicts`).

All functions are pure and deterministic given their seed.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize
from scipy import stats as sps

from .extraction import COUNTS, POOLED, pooled

__all__ = [
    "BINARY_VALUES",
    "COMPARISON_COLUMNS",
    "MCNEMAR_EXACT_MAX_DISCORDANT",
    "PERMUTATION_EXACT_MAX_NONZERO",
    "SCORE_COLUMNS",
    "VERDICTS",
    "EquivalenceResult",
    "McNemarResult",
    "PermutationResult",
    "Verdict",
    "bootstrap_ci",
    "check_verdicts",
    "extraction_counts",
    "cluster_bootstrap_ci",
    "cluster_bootstrap_equivalence",
    "cluster_permutation_test",
    "compare",
    "holm",
    "is_binary",
    "mcnemar_test",
    "min_detectable_difference",
    "pair",
    "paired_bootstrap_diff_ci",
    "paired_frame",
    "paired_permutation_test",
    "paired_pooled_bootstrap",
    "pooled_bootstrap_ci",
    "pooled_permutation_test",
    "tango_ci",
    "tango_equivalence",
    "tango_score",
    "tost",
    "value_range",
    "verdict",
    "wilson_ci",
    "zero_change_bound",
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
    "diff_ci_method",
    "test",
    "p",
    "p_holm",
    "eq_low",
    "eq_high",
    "eq_method",
    "tost_p",
    "equivalent",
    "verdict",
    "mdd",
    "higher_is_better",
)
"""Columns of the ``comparisons`` table returned by :func:`compare`.

``diff_ci_low``/``diff_ci_high`` is the (1 - alpha) CI of ``diff`` (method ``diff_ci_method``);
``eq_low``/``eq_high`` the (1 - 2 alpha) equivalence interval (method ``eq_method``), and
``tost_p`` the smallest alpha at which that interval would lie inside +/- margin (TOST p-value);
``equivalent`` is whether it does at the study's alpha."""

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
class EquivalenceResult:
    """An equivalence test of the mean paired difference against (-margin, +margin).

    ``low``/``high`` is the (1 - 2 alpha) interval of the difference; the difference is declared
    equivalent when it lies strictly inside (-margin, +margin), which is TOST at level alpha.
    ``p_lower``/``p_upper`` are the p-values of the two one-sided tests (H0: diff <= -margin,
    H0: diff >= +margin) and ``pvalue`` their maximum: the smallest alpha at which the interval
    would lie inside the margin, so ``equivalent == (pvalue < alpha)``.
    """

    diff: float
    margin: float
    alpha: float
    low: float
    high: float
    p_lower: float
    p_upper: float
    pvalue: float
    equivalent: bool
    method: str


@dataclass(frozen=True)
class Verdict:
    """A comparison's verdict with the evidence behind it."""

    verdict: str
    diff: float
    ci_low: float
    ci_high: float
    p: float
    p_holm: float
    eq_low: float
    eq_high: float
    tost_p: float


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
    boot = _cluster_bootstrap_means(values, clusters, n_boot, seed)
    if boot.size == 0:
        return (math.nan, math.nan)
    return _percentile_interval(boot, alpha)


def _cluster_bootstrap_means(values: Any, clusters: Any, n_boot: int, seed: Seed) -> np.ndarray:
    """The n_boot item means of cluster-bootstrap resamples (empty when there are no values)."""
    arr = _as_float_array(values)
    codes = _cluster_codes(clusters)
    if codes.size != arr.size:
        raise ValueError(f"values ({arr.size}) and clusters ({codes.size}) differ in length")
    if arr.size == 0:
        return np.empty(0)
    g = int(codes.max()) + 1
    sums = np.bincount(codes, weights=arr, minlength=g)
    sizes = np.bincount(codes, minlength=g).astype(float)
    return _bootstrap_ratio_means(sums, sizes, n_boot, _rng(seed))


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


def _sign_flip_pvalue(units: np.ndarray, n_perm: int, seed: Seed) -> tuple[float, int, int, str]:
    """Two-sided sign-flip p-value of sum(units): (p, nonzero units, patterns examined, method).

    Zero units do not change under a flip, so only the k nonzero ones are flipped: all 2^k
    patterns when k <= PERMUTATION_EXACT_MAX_NONZERO, otherwise n_perm random patterns with
    p = (hits + 1) / (n_perm + 1). With no nonzero unit p = 1.
    """
    d = units[units != 0]
    k = d.size
    if k == 0:
        return 1.0, 0, 1, "exact"
    total = float(d.sum())
    observed = abs(total)
    tol = 1e-9 * float(np.abs(d).sum())
    if k <= PERMUTATION_EXACT_MAX_NONZERO:
        bits = (np.arange(2**k, dtype=np.int64)[:, None] >> np.arange(k)) & 1
        # flipping the units in `bits` turns the sum into total - 2 * (flipped sum)
        sums = total - 2.0 * (bits @ d)
        hits = int(np.sum(np.abs(sums) >= observed - tol))
        return hits / 2**k, k, 2**k, "exact"
    rng = _rng(seed)
    hits = 0
    chunk = max(1, _BOOT_CHUNK_ELEMENTS // k)
    for start in range(0, n_perm, chunk):
        rows = min(chunk, n_perm - start)
        packed = rng.integers(0, 256, size=(rows, (k + 7) // 8), dtype=np.uint8)
        bits = np.unpackbits(packed, axis=1, count=k).astype(float)
        sums = total - 2.0 * (bits @ d)
        hits += int(np.sum(np.abs(sums) >= observed - tol))
    return (hits + 1) / (n_perm + 1), k, n_perm, "monte-carlo"


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
    p, k, patterns, method = _sign_flip_pvalue(diffs, n_perm, seed)
    return PermutationResult(mean_diff, p, k, patterns, method)


def cluster_permutation_test(
    a: Any, b: Any, clusters: Any, n_perm: int = 10_000, seed: Seed = 0
) -> PermutationResult:
    """Two-sided sign-flip permutation test that mean(b - a) is zero, flipping whole clusters.

    Items of one cluster (an MMLU subject) share whatever makes the arm differ from the
    baseline there, so they are not independent; the unit of the test is the cluster. Under
    the null each cluster's sum of paired differences is as likely to have either sign; the
    p-value is the share of sign patterns (one sign per cluster) whose |total| is at least the
    observed |total|, exact over all 2^G patterns of the G clusters with a nonzero sum when
    G <= PERMUTATION_EXACT_MAX_NONZERO, else n_perm random patterns (p = (hits + 1) /
    (n_perm + 1)). With G clusters the smallest p is 2 / 2^G (0.125 with 4 subjects): few
    clusters cannot show significance, which is correct. ``n_nonzero`` counts clusters.
    Missing cluster labels are clusters of one; with one item per cluster this is
    :func:`paired_permutation_test`.
    """
    a_arr, b_arr = _as_float_array(a), _as_float_array(b)
    if a_arr.shape != b_arr.shape:
        raise ValueError(f"a ({a_arr.size}) and b ({b_arr.size}) differ in length")
    diffs = b_arr - a_arr
    codes = _cluster_codes(clusters)
    if codes.size != diffs.size:
        raise ValueError(f"values ({diffs.size}) and clusters ({codes.size}) differ in length")
    mean_diff = float(diffs.mean()) if diffs.size else math.nan
    sums = np.bincount(codes, weights=diffs) if diffs.size else np.empty(0)
    p, k, patterns, method = _sign_flip_pvalue(sums, n_perm, seed)
    return PermutationResult(mean_diff, p, k, patterns, f"cluster-{method}")


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


# --------------------------------------------------------------------------- equivalence


def _check_margin(margin: float) -> None:
    """Raise unless margin > 0."""
    if not margin > 0:
        raise ValueError(f"margin must be positive, got {margin}")


def _check_counts(b: int, c: int, n: int) -> None:
    """Raise unless b, c, n are counts of a paired 2x2 table: 0 <= b, c and b + c <= n."""
    if min(b, c, n) < 0 or b + c > n:
        raise ValueError(f"need 0 <= b, c and b + c <= n, got b={b}, c={c}, n={n}")


def _undecided(diff: float, margin: float, alpha: float, method: str) -> EquivalenceResult:
    """An equivalence result with nothing to decide on: NaN interval and p, not equivalent."""
    nan = math.nan
    return EquivalenceResult(diff, margin, alpha, nan, nan, nan, nan, nan, False, method)


def _tango_cell(b: int, c: int, n: int, delta: float) -> float:
    """Tango's restricted MLE of the probability of the "-1" cell (baseline right, arm wrong).

    Under H0: p_b - p_c = delta, the multinomial likelihood of the cells (b: +1, c: -1, the
    rest: 0) is maximised at p_c = q, p_b = q + delta with q the non-negative root of
    2n q^2 - W q - c delta (1 - delta) = 0, W = (b + c) - delta (2n - b + c). Clamped to the
    admissible region (every cell probability in [0, 1]), which only rounding can leave.
    """
    w = (b + c) - delta * (2 * n - b + c)
    disc = w * w + 8.0 * n * c * delta * (1.0 - delta)
    q = (w + math.sqrt(max(disc, 0.0))) / (4.0 * n)
    return min(max(q, max(0.0, -delta)), max(0.0, (1.0 - delta) / 2.0))


def tango_score(b: int, c: int, n: int, delta: float) -> float:
    """Tango's (1998) score statistic for H0: p_b - p_c = delta in a paired 2x2 table.

    ``b`` counts items the arm gets right and the baseline wrong (difference +1), ``c`` the
    reverse (-1), ``n`` all items; the difference of the two proportions is (b - c) / n.
    Z(delta) = (b - c - n delta) / sqrt(n (2 q + delta (1 - delta))) with q the restricted MLE
    of :func:`_tango_cell`. It falls as delta rises, is 0 at delta = (b - c) / n, and at
    delta = 0 it is McNemar's statistic without continuity correction, (b - c) / sqrt(b + c).
    """
    _check_counts(b, c, n)
    if n == 0 or not -1.0 <= delta <= 1.0:
        raise ValueError(f"need n > 0 and -1 <= delta <= 1, got n={n}, delta={delta}")
    num = b - c - n * delta
    var = n * (2.0 * _tango_cell(b, c, n, delta) + delta * (1.0 - delta))
    if var <= 0.0:
        return 0.0 if num == 0 else math.copysign(math.inf, num)
    return num / math.sqrt(var)


_EDGE = 1e-12  # how close to +/-1 the root search for Tango's limits goes


def _tango_limit(b: int, c: int, n: int, z: float, side: int) -> float:
    """The limit of Tango's interval on one side (+1 upper, -1 lower): where Z = -side * z."""
    est = (b - c) / n
    edge = side * (1.0 - _EDGE)
    if side * est >= 1.0 - _EDGE:
        return float(side)

    def f(delta: float) -> float:
        return tango_score(b, c, n, delta) + side * z

    if side * f(edge) > 0:  # |Z| stays below z all the way to the end of [-1, 1]
        return float(side)
    lo, hi = sorted((est, edge))
    return float(optimize.brentq(f, lo, hi, xtol=1e-14, rtol=4 * np.finfo(float).eps))


def tango_ci(b: int, c: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Tango's (1998) score interval for the difference of paired proportions (b - c) / n.

    The (1 - alpha) interval is every delta that the score test of :func:`tango_score` does not
    reject at level alpha, |Z(delta)| < z_{1 - alpha/2}; its limits are found by root finding
    on either side of the estimate. It stays inside [-1, 1] and does not collapse when no item
    changed: with b = c = 0 it is +/- z^2 / (n + z^2) (at 95 %, about 3.8 / n). Since Z(0) is
    McNemar's uncorrected statistic, the interval excludes 0 exactly when that test rejects.
    NaNs when n = 0.
    """
    _check_alpha(alpha)
    _check_counts(b, c, n)
    if n == 0:
        return (math.nan, math.nan)
    z = float(sps.norm.isf(alpha / 2))
    return (_tango_limit(b, c, n, z, -1), _tango_limit(b, c, n, z, +1))


def tango_equivalence(
    b: int, c: int, n: int, margin: float, alpha: float = 0.05
) -> EquivalenceResult:
    """Equivalence of paired proportions from Tango's score interval (method "tango-score").

    The interval is :func:`tango_ci` at level 1 - 2 alpha; equivalent when it lies strictly
    inside (-margin, +margin). The one-sided p-values are those of the score tests at the
    margins, p_lower = P(N(0,1) > Z(-margin)), p_upper = P(N(0,1) < Z(+margin)), so that
    pvalue < alpha exactly when the interval lies inside. With no changed item (b = c = 0) this
    needs n > z^2 (1 - m) / m items at margin m: 268 at m = 0.01 and alpha = 0.05.
    """
    _check_alpha(alpha)
    _check_margin(margin)
    _check_counts(b, c, n)
    if n == 0:
        return _undecided(math.nan, margin, alpha, "tango-score")
    low, high = tango_ci(b, c, n, 2 * alpha)

    def one_sided(delta: float) -> float:  # P(N(0,1) > Z(delta)), for H0: diff <= delta
        if delta <= -1.0:
            return 0.0
        if delta >= 1.0:
            return 1.0
        return float(sps.norm.sf(tango_score(b, c, n, min(max(delta, _EDGE - 1), 1 - _EDGE))))

    p_lower = one_sided(-margin)
    p_upper = 1.0 - one_sided(margin)
    pvalue = max(p_lower, p_upper)
    equivalent = bool(-margin < low and high < margin)
    return EquivalenceResult(
        (b - c) / n, margin, alpha, low, high, p_lower, p_upper, pvalue, equivalent, "tango-score"
    )


def zero_change_bound(n: int, alpha: float = 0.05) -> float:
    """Exact one-sided (1 - alpha) upper confidence bound on the rate of changed items when none
    of n changed: 1 - alpha^(1/n), about -ln(alpha) / n (the "rule of three": 3 / n at 5 %).

    It is the floor of the continuous and clustered intervals: a metric bounded by a range R
    moves its mean by at most R times the rate of changed items, so n items cannot resolve a
    mean difference finer than +/- R * zero_change_bound(n, alpha), however many of them agree.
    The intervals are widened to at least that half-width around the observed difference, a
    conservative floor rather than an exact interval when some items did change. NaN for n < 1.
    """
    _check_alpha(alpha)
    return 1.0 - alpha ** (1.0 / n) if n >= 1 else math.nan


def value_range(values: Any) -> float:
    """The range R of a metric for the zero-change floor: 1 when every value lies in [0, 1]
    (accuracy, exact match, F1), else the span of the values and 0, max(hi, 0) - min(lo, 0)."""
    arr = _as_float_array(values)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0 or (arr.min() >= 0.0 and arr.max() <= 1.0):
        return 1.0
    return float(max(arr.max(), 0.0) - min(arr.min(), 0.0))


def _floor_pvalue(gap: float, value_range: float | None, n: int) -> float:
    """The smallest alpha at which value_range * zero_change_bound(n, alpha) < gap."""
    if not value_range:
        return 0.0
    if gap <= 0.0:
        return 1.0
    if gap >= value_range:
        return 0.0
    return (1.0 - gap / value_range) ** n


def _floored(
    low: float, high: float, mean: float, n: int, tail: float, value_range: float | None
) -> tuple[float, float]:
    """(low, high) widened to at least mean +/- value_range * zero_change_bound(n, tail)."""
    if not value_range or n < 1:
        return low, high
    half = value_range * zero_change_bound(n, tail)
    return min(low, mean - half), max(high, mean + half)


def tost(
    diffs: Any, margin: float, alpha: float = 0.05, value_range: float | None = 1.0
) -> EquivalenceResult:
    """Paired TOST with a zero-change floor: is the mean difference within (-margin, +margin)?

    The (1 - 2 alpha) t-interval of the mean paired difference, mean +/- t_{1-alpha, n-1} * se,
    widened to at least mean +/- R * u0 with R = ``value_range`` (the metric's range, 1 for
    metrics in [0, 1]) and u0 = :func:`zero_change_bound` (n, alpha) (method "t+floor"); the
    difference is equivalent when that interval lies strictly inside (-margin, +margin). Each
    one-sided p-value is the larger of the one-sided t-test's (H0 mean <= -margin, resp.
    >= +margin, as statsmodels' ``ttost_paired``) and the floor's, (1 - (margin -/+ mean) / R)^n,
    so pvalue < alpha exactly when the interval lies inside.

    Without the floor (``value_range=None``) this is the classic t TOST, which declares any
    zero-variance sample equivalent however small: n items that all agree give se = 0 and p = 0.
    With it, n identical items are equivalent at margin m only when R (1 - alpha^(1/n)) < m,
    n > ln(alpha) / ln(1 - m / R): 299 items at m = 0.01, alpha = 0.05. ``margin`` is in the
    metric's units (0.01 = one accuracy point). With fewer than two differences nothing can be
    said: NaN interval and p, not equivalent.
    """
    _check_alpha(alpha)
    _check_margin(margin)
    d = _as_float_array(diffs)
    n = d.size
    mean = float(d.mean()) if n else math.nan
    method = "t+floor" if value_range else "t"
    if n < 2:
        return _undecided(mean, margin, alpha, method)
    df = float(n - 1)
    se = float(d.std(ddof=1)) / math.sqrt(n)
    if se == 0.0:
        low = high = mean
        p_lower = 0.0 if mean > -margin else 1.0
        p_upper = 0.0 if mean < margin else 1.0
    else:
        half = float(sps.t.isf(alpha, df)) * se
        low, high = mean - half, mean + half
        p_lower = float(sps.t.sf((mean + margin) / se, df))
        p_upper = float(sps.t.cdf((mean - margin) / se, df))
    low, high = _floored(low, high, mean, n, alpha, value_range)
    p_lower = max(p_lower, _floor_pvalue(margin + mean, value_range, n))
    p_upper = max(p_upper, _floor_pvalue(margin - mean, value_range, n))
    equivalent = bool(-margin < low and high < margin)
    return EquivalenceResult(
        mean, margin, alpha, low, high, p_lower, p_upper, max(p_lower, p_upper), equivalent, method
    )


def _order_statistic_interval(boot: np.ndarray, alpha: float) -> tuple[float, float]:
    """The (1 - 2 alpha) percentile interval as order statistics: the k-th smallest and k-th
    largest draw, k = ceil(alpha * B), so that it lies inside (-m, m) exactly when fewer than
    alpha * B draws are <= -m and fewer than alpha * B are >= m."""
    s = np.sort(boot)
    k = max(1, math.ceil(alpha * s.size - 1e-9))
    return float(s[k - 1]), float(s[s.size - k])


def cluster_bootstrap_equivalence(
    diffs: Any,
    clusters: Any,
    margin: float,
    alpha: float = 0.05,
    n_boot: int = 2000,
    seed: Seed = 0,
    value_range: float | None = 1.0,
) -> EquivalenceResult:
    """Equivalence of the mean paired difference when items come in clusters (subjects).

    The (1 - 2 alpha) percentile interval of the cluster bootstrap of the mean difference (whole
    clusters resampled, as :func:`cluster_bootstrap_ci` with the same seed), widened to at least
    the zero-change floor mean +/- R * :func:`zero_change_bound` (n items, alpha) (method
    "cluster-bootstrap+floor"); equivalent when it lies strictly inside (-margin, +margin). The
    one-sided p-values are the bootstrap's, the share of draws <= -margin (resp. >= +margin),
    or the floor's when larger, so pvalue < alpha exactly when the interval lies inside.
    """
    _check_alpha(alpha)
    _check_margin(margin)
    boot = _cluster_bootstrap_means(diffs, clusters, n_boot, seed)
    return _bootstrap_equivalence(boot, _as_float_array(diffs), margin, alpha, value_range)


def _bootstrap_equivalence(
    boot: np.ndarray, diffs: np.ndarray, margin: float, alpha: float, value_range: float | None
) -> EquivalenceResult:
    """:func:`cluster_bootstrap_equivalence` from the bootstrap draws of the mean difference."""
    method = "cluster-bootstrap+floor" if value_range else "cluster-bootstrap"
    n = diffs.size
    return _draws_equivalence(
        boot, float(diffs.mean()) if n else math.nan, n, margin, alpha, value_range, method
    )


def _draws_equivalence(
    boot: np.ndarray,
    mean: float,
    n: int,
    margin: float,
    alpha: float,
    value_range: float | None,
    method: str,
) -> EquivalenceResult:
    """Equivalence from bootstrap draws of a difference whose estimate is ``mean`` (n items):
    the (1 - 2 alpha) order-statistic interval of the draws widened to the zero-change floor;
    one-sided p-values the share of draws beyond each margin, or the floor's when larger."""
    if n == 0 or not math.isfinite(mean) or boot.size == 0:
        return _undecided(mean if n else math.nan, margin, alpha, method)
    low, high = _floored(*_order_statistic_interval(boot, alpha), mean, n, alpha, value_range)
    p_lower = max(float(np.mean(boot <= -margin)), _floor_pvalue(margin + mean, value_range, n))
    p_upper = max(float(np.mean(boot >= margin)), _floor_pvalue(margin - mean, value_range, n))
    equivalent = bool(-margin < low and high < margin)
    return EquivalenceResult(
        mean, margin, alpha, low, high, p_lower, p_upper, max(p_lower, p_upper), equivalent, method
    )


# --------------------------------------------------------------------------- pooled counts
# A structured-extraction task (quantstudy.extraction) scores each item with counts tp, fp, fn;
# its corpus metrics (micro-F1, precision, recall) are ratios of the counts pooled over items,
# not means of per-item values. The item (sentence) stays the unit: intervals resample items
# and pool again, the test swaps the two arms' answers item by item.


def _counts_array(counts: Any) -> np.ndarray:
    """An (n, 3) float array of per-item (tp, fp, fn)."""
    arr = np.asarray(counts, dtype=float)
    if arr.size == 0:
        return arr.reshape(0, 3)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise ValueError(f"counts must be (n, 3) rows of (tp, fp, fn), got shape {arr.shape}")
    return arr


def _pooled_metric(totals: np.ndarray, name: str) -> np.ndarray:
    """The pooled metric `name` (micro_f1, precision, recall) of rows of (tp, fp, fn) totals."""
    if name not in POOLED:
        raise ValueError(f"unknown pooled metric {name!r}; known: {', '.join(POOLED)}")
    totals = np.atleast_2d(totals)
    return np.asarray(pooled(totals[:, 0], totals[:, 1], totals[:, 2])[name], dtype=float)


def _resampled_totals(counts: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, k) column totals of n_boot resamples of the rows, with replacement."""
    n, k = counts.shape
    out = np.empty((n_boot, k))
    chunk = max(1, _BOOT_CHUNK_ELEMENTS // max(n * k, 1))
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        out[start:stop] = counts[idx].sum(axis=1)
    return out


def pooled_bootstrap_ci(
    counts: Any, name: str, n_boot: int = 2000, seed: Seed = 0, alpha: float = 0.05
) -> tuple[float, float]:
    """Percentile bootstrap CI of a pooled metric: resample items (rows of tp, fp, fn) with
    replacement, pool their counts again, take the metric. Draws where the metric is undefined
    (a zero denominator) are left out; NaNs when there are no items or no defined draw."""
    _check_alpha(alpha)
    arr = _counts_array(counts)
    if arr.shape[0] == 0:
        return (math.nan, math.nan)
    draws = _pooled_metric(_resampled_totals(arr, n_boot, _rng(seed)), name)
    draws = draws[np.isfinite(draws)]
    return _percentile_interval(draws, alpha) if draws.size else (math.nan, math.nan)


def paired_pooled_bootstrap(
    a: Any, b: Any, name: str, n_boot: int = 2000, seed: Seed = 0
) -> np.ndarray:
    """Bootstrap draws of metric(b) - metric(a) for a pooled metric, resampling items jointly:
    one draw takes the same items for both arms (a = baseline, b = arm; rows of tp, fp, fn),
    pools each arm's counts and subtracts. Undefined draws are left out."""
    a_arr, b_arr = _counts_array(a), _counts_array(b)
    if a_arr.shape != b_arr.shape:
        raise ValueError(f"a ({a_arr.shape[0]}) and b ({b_arr.shape[0]}) differ in length")
    if a_arr.shape[0] == 0:
        return np.empty(0)
    totals = _resampled_totals(np.hstack([a_arr, b_arr]), n_boot, _rng(seed))
    draws = _pooled_metric(totals[:, 3:], name) - _pooled_metric(totals[:, :3], name)
    return draws[np.isfinite(draws)]


def pooled_permutation_test(
    a: Any, b: Any, name: str, n_perm: int = 10_000, seed: Seed = 0
) -> PermutationResult:
    """Two-sided paired permutation test (approximate randomization) that a pooled metric is
    the same for both arms (a = baseline, b = arm; per-item rows of tp, fp, fn).

    Under the null the two answers to an item are exchangeable: each pattern of swaps (arm's
    counts for the baseline's on some items) is as likely as the observed one. The statistic is
    metric(b) - metric(a) of the pooled counts; the p-value is the share of swap patterns whose
    |statistic| is at least the observed one. Items whose counts agree do not change under a
    swap, so only the k differing ones are swapped: all 2^k patterns when k <=
    PERMUTATION_EXACT_MAX_NONZERO, otherwise n_perm random patterns, p = (hits + 1) / (n_perm
    + 1). With no differing item p = 1; when the metric is undefined for either arm, NaN.
    """
    a_arr, b_arr = _counts_array(a), _counts_array(b)
    if a_arr.shape != b_arr.shape:
        raise ValueError(f"a ({a_arr.shape[0]}) and b ({b_arr.shape[0]}) differ in length")
    ta, tb = a_arr.sum(axis=0), b_arr.sum(axis=0)
    observed = float(_pooled_metric(tb, name)[0] - _pooled_metric(ta, name)[0])
    d = (b_arr - a_arr)[np.any(b_arr != a_arr, axis=1)]
    k = d.shape[0]
    if not math.isfinite(observed):
        return PermutationResult(observed, math.nan, k, 0, "exact")
    if k == 0:
        return PermutationResult(observed, 1.0, 0, 1, "exact")
    tol = 1e-9

    def hits_of(bits: np.ndarray) -> int:
        moved = bits @ d  # swapping an item moves its difference from the arm to the baseline
        stats_ = _pooled_metric(tb - moved, name) - _pooled_metric(ta + moved, name)
        return int(np.sum(np.abs(stats_) >= abs(observed) - tol))

    if k <= PERMUTATION_EXACT_MAX_NONZERO:
        bits = ((np.arange(2**k, dtype=np.int64)[:, None] >> np.arange(k)) & 1).astype(float)
        return PermutationResult(observed, hits_of(bits) / 2**k, k, 2**k, "exact")
    rng = _rng(seed)
    hits = 0
    chunk = max(1, _BOOT_CHUNK_ELEMENTS // k)
    for start in range(0, n_perm, chunk):
        rows = min(chunk, n_perm - start)
        packed = rng.integers(0, 256, size=(rows, (k + 7) // 8), dtype=np.uint8)
        hits += hits_of(np.unpackbits(packed, axis=1, count=k).astype(float))
    return PermutationResult(observed, (hits + 1) / (n_perm + 1), k, n_perm, "monte-carlo")


def extraction_counts(rows: pd.DataFrame) -> bool:
    """Whether a task's per-example rows are an extraction task's: they score every count
    metric (tp, fp, fn) of quantstudy.extraction."""
    return set(COUNTS) <= set(rows["metric"].unique())


def _arm_counts(rows: pd.DataFrame, arm: str) -> np.ndarray:
    """One arm's per-item (tp, fp, fn), items in (subject, doc_id) order."""
    sel = rows[rows["arm"] == arm].copy()
    sel["subject"] = sel["subject"].astype(object).where(sel["subject"].notna(), _NO_SUBJECT)
    wide = sel.pivot_table(
        index=["subject", "doc_id"], columns="metric", values="value", aggfunc="first"
    )
    return wide[list(COUNTS)].to_numpy(dtype=float)


def _paired_counts(
    rows: pd.DataFrame, task: str, arm: str, baseline: str
) -> tuple[np.ndarray, np.ndarray]:
    """The baseline's and the arm's per-item (tp, fp, fn), paired by :func:`paired_frame` (which
    refuses arms that saw different items)."""
    frames = [paired_frame(rows, task, c, arm, baseline) for c in COUNTS]
    a = np.column_stack([f["baseline"].to_numpy(dtype=float) for f in frames])
    b = np.column_stack([f["arm"].to_numpy(dtype=float) for f in frames])
    return a, b


def _pooled_score_row(
    counts: np.ndarray, name: str, n_boot: int, seed: Seed, alpha: float
) -> dict[str, Any]:
    """n, pooled value and its bootstrap CI (items resampled, counts pooled again)."""
    low, high = pooled_bootstrap_ci(counts, name, n_boot, seed, alpha)
    return {
        "n": counts.shape[0],
        "mean": float(_pooled_metric(counts.sum(axis=0), name)[0]),
        "ci_low": low,
        "ci_high": high,
        "ci_method": "pooled-bootstrap",
    }


def _pooled_comparison_row(
    a: np.ndarray,
    b: np.ndarray,
    arm: str,
    task: str,
    name: str,
    margin: float,
    alpha: float,
    n_boot: int,
    n_perm: int,
    seed: int,
) -> dict[str, Any]:
    """A comparisons row for a pooled metric: the difference of the pooled values, a paired
    bootstrap CI and equivalence interval (both floored, as the other continuous metrics), the
    paired permutation test, and the MDD from the bootstrap's standard deviation."""
    n = a.shape[0]
    base = float(_pooled_metric(a.sum(axis=0), name)[0])
    other = float(_pooled_metric(b.sum(axis=0), name)[0])
    diff = other - base
    boot = paired_pooled_bootstrap(a, b, name, n_boot, _subseed(seed, "diff", arm, task, name))
    if boot.size and math.isfinite(diff):
        low, high = _floored(*_percentile_interval(boot, alpha), diff, n, alpha / 2, 1.0)
    else:
        low = high = math.nan
    perm = pooled_permutation_test(a, b, name, n_perm, _subseed(seed, "perm", arm, task, name))
    eq = _draws_equivalence(boot, diff, n, margin, alpha, 1.0, "paired-bootstrap+floor")
    sd = float(boot.std(ddof=1)) if boot.size >= 2 else math.nan
    return _row(
        arm=arm, task=task, metric=name, n=n, baseline_mean=base, arm_mean=other, diff=diff,
        diff_ci_low=low, diff_ci_high=high, diff_ci_method="paired-bootstrap+floor",
        test=f"pooled-permutation-{perm.method}", p=perm.pvalue, eq=eq,
        # the bootstrap sd of the difference is its standard error: sd_diff / sqrt(n)
        sd=sd * math.sqrt(n), alpha=alpha,
    )  # fmt: skip


def _row(*, eq, sd: float, alpha: float, **columns: Any) -> dict[str, Any]:
    """A comparisons row before Holm and the verdict: the columns given (arm, task, metric, n,
    baseline_mean, arm_mean, diff, diff_ci_low, diff_ci_high, diff_ci_method, test, p, in that
    order), then the equivalence result's and the MDD from the per-example sd of the difference."""
    n = columns["n"]
    return {
        **columns,
        "p_holm": math.nan,
        "eq_low": eq.low,
        "eq_high": eq.high,
        "eq_method": eq.method,
        "tost_p": eq.pvalue,
        "equivalent": eq.equivalent,
        "verdict": None,
        "mdd": min_detectable_difference(sd, n, alpha) if n >= 2 else math.nan,
    }


def verdict(
    diff: float,
    ci: tuple[float, float],
    p: float,
    p_holm: float,
    eq: tuple[float, float],
    margin: float,
    alpha: float = 0.05,
    tost_p: float = math.nan,
    higher_is_better: bool = True,
) -> Verdict:
    """The verdict on one arm-vs-baseline comparison, with its evidence.

    "equivalent" when the (1 - 2 alpha) equivalence interval ``eq`` lies strictly inside
    (-margin, +margin) (TOST at level alpha; this takes precedence over a significant but
    smaller-than-margin difference); else, when the Holm-adjusted p-value is below alpha *and*
    the (1 - alpha) CI of the difference lies on one side of 0 (the side of ``diff``): "better"
    where that is the metric's good side (above 0 where higher is better, below 0 for metrics
    such as perplexity), "worse" on the other; else "inconclusive". A test and an interval that
    disagree (a significant p with a CI that holds 0) give "inconclusive", never a claim the
    interval does not back. NaN evidence never yields a decision. ``tost_p`` is only carried.
    """
    _check_alpha(alpha)
    _check_margin(margin)
    low, high = ci
    eq_low, eq_high = eq
    if -margin < eq_low and eq_high < margin:  # False for NaN
        label = "equivalent"
    elif p_holm < alpha and diff > 0 and low > 0:
        label = "better" if higher_is_better else "worse"
    elif p_holm < alpha and diff < 0 and high < 0:
        label = "worse" if higher_is_better else "better"
    else:
        label = "inconclusive"
    return Verdict(
        label,
        float(diff),
        float(low),
        float(high),
        float(p),
        float(p_holm),
        float(eq_low),
        float(eq_high),
        float(tost_p),
    )


def check_verdicts(
    comparisons: pd.DataFrame, margin: float, alpha: float | None = None
) -> pd.DataFrame:
    """Raise ValueError naming every row whose verdict its own intervals do not back.

    "better" and "worse" need a CI of the difference (``diff_ci_low``, ``diff_ci_high``) that
    excludes 0 on the verdict's side: above 0 for "better" where higher is better, below 0
    where lower is better (the ``higher_is_better`` column :func:`compare` writes; all
    higher-is-better without it), and the other way round for "worse"; with ``alpha``
    also p_holm < alpha. "equivalent" needs the equivalence interval (``eq_low``, ``eq_high``)
    strictly inside (-margin, +margin). Verdicts "inconclusive" and "missing" claim nothing.
    Returns the table unchanged, so it can be chained.
    """
    _check_margin(margin)
    hib = (
        comparisons["higher_is_better"].astype(bool).to_numpy()
        if "higher_is_better" in comparisons.columns
        else np.ones(len(comparisons), dtype=bool)
    )
    bad = []
    for row, higher in zip(comparisons.to_dict("records"), hib, strict=True):
        label = row["verdict"]
        low, high = float(row["diff_ci_low"]), float(row["diff_ci_high"])
        why = None
        if label in ("better", "worse"):
            gain = label == "better"
            above = low > 0  # False for NaN
            below = high < 0
            if not (above or below):
                why = f"its CI [{low:+.4g}, {high:+.4g}] contains 0"
            elif above != (gain == bool(higher)):
                why = f"its CI [{low:+.4g}, {high:+.4g}] lies on the other side of 0"
            elif alpha is not None and not float(row["p_holm"]) < alpha:
                why = f"its Holm-adjusted p = {float(row['p_holm']):.3g} is not below {alpha:g}"
        elif label == "equivalent":
            eq_low, eq_high = float(row["eq_low"]), float(row["eq_high"])
            if not (-margin < eq_low and eq_high < margin):
                why = (
                    f"its equivalence interval [{eq_low:+.4g}, {eq_high:+.4g}] is not inside "
                    f"+/-{margin:g}"
                )
        if why:
            bad.append(
                f"arm {row['arm']!r}, task {row['task']!r}, metric {row['metric']!r}: "
                f"{label!r} but {why}"
            )
    if bad:
        raise ValueError(
            f"{len(bad)} verdict(s) disagree with their own intervals: " + "; ".join(bad[:5])
        )
    return comparisons


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
    """Raise unless df has the per-example score columns and finite values (naming a bad row)."""
    missing = [c for c in _REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"per-example scores lack columns {missing}")
    values = pd.to_numeric(df["value"], errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(values)
    if bad.any():
        first = df[bad].iloc[0]
        raise ValueError(
            f"per-example scores hold {int(bad.sum())} non-numeric or non-finite values, e.g. "
            f"{first['value']!r} for arm {first['arm']!r}, task {first['task']!r}, metric "
            f"{first['metric']!r}, doc_id {first['doc_id']!r}"
        )


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
        "diff_ci_method": None,
        "test": None,
        "p": math.nan,
        "p_holm": math.nan,
        "eq_low": math.nan,
        "eq_high": math.nan,
        "eq_method": None,
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
    span: float,
    margin: float,
    alpha: float,
    n_boot: int,
    n_perm: int,
    seed: int,
) -> dict[str, Any]:
    """Everything but the Holm adjustment and verdict for one paired comparison.

    ``span`` is the metric's range for the zero-change floor (:func:`value_range`).
    """
    a = frame["baseline"].to_numpy(dtype=float)
    b = frame["arm"].to_numpy(dtype=float)
    diffs = b - a
    n = diffs.size
    mean = float(diffs.mean())
    diff_seed = _subseed(seed, "diff", arm, task, metric)
    perm_seed = _subseed(seed, "perm", arm, task, metric)
    if clustered:
        # the subject is the unit: test, CI and equivalence interval all resample or flip
        # whole subjects, so that a verdict and its interval cannot disagree
        boot = _cluster_bootstrap_means(diffs, frame["subject"], n_boot, diff_seed)
        low, high = _floored(*_percentile_interval(boot, alpha), mean, n, alpha / 2, span)
        ci_method = "cluster-bootstrap+floor"
        perm = cluster_permutation_test(a, b, frame["subject"], n_perm, perm_seed)
        test, p = "cluster-permutation", perm.pvalue
        eq = _bootstrap_equivalence(boot, diffs, margin, alpha, span)
    elif binary:
        mc = mcnemar_test(a, b)
        test, p = mc.method, mc.pvalue
        low, high = tango_ci(mc.n01, mc.n10, n, alpha)
        ci_method = "tango-score"
        eq = tango_equivalence(mc.n01, mc.n10, n, margin, alpha)
    else:
        boot_low, boot_high = bootstrap_ci(diffs, n_boot, diff_seed, alpha)
        low, high = _floored(boot_low, boot_high, mean, n, alpha / 2, span)
        ci_method = "bootstrap+floor"
        perm = paired_permutation_test(a, b, n_perm, perm_seed)
        test, p = "permutation", perm.pvalue
        eq = tost(diffs, margin, alpha, span)
    sd = float(diffs.std(ddof=1)) if n >= 2 else math.nan
    return _row(
        arm=arm, task=task, metric=metric, n=n, baseline_mean=float(a.mean()),
        arm_mean=float(b.mean()), diff=mean, diff_ci_low=low, diff_ci_high=high,
        diff_ci_method=ci_method, test=test, p=p, eq=eq, sd=sd, alpha=alpha,
    )  # fmt: skip


def _decided(
    family: list[dict[str, Any]], margin: float, alpha: float, hib: bool
) -> list[dict[str, Any]]:
    """The rows of one (task, metric) family with Holm-adjusted p-values (across its arms) and
    verdicts filled in; "missing" rows stay as they are."""
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
            (r["eq_low"], r["eq_high"]),
            margin,
            alpha,
            r["tost_p"],
            hib,
        ).verdict
    return family


def _pooled_family(
    task_rows: pd.DataFrame,
    task: str,
    name: str,
    arm_list: Sequence[str],
    baseline: str,
    margin: float,
    alpha: float,
    n_boot: int,
    n_perm: int,
    seed: int,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Score rows and (undecided) comparison rows of one pooled metric of an extraction task."""
    rows = task_rows[task_rows["metric"].isin(COUNTS)]
    present = set(rows["arm"].unique())
    scored = [
        {"arm": arm, "task": task, "metric": name}
        | _pooled_score_row(
            _arm_counts(rows, arm), name, n_boot, _subseed(seed, "score", arm, task, name), alpha
        )
        for arm in arm_list
        if arm in present
    ]
    family = []
    for arm in arm_list:
        if arm == baseline:
            continue
        if baseline not in present or arm not in present:
            family.append(_missing_comparison(arm, task, name) | {"higher_is_better": True})
            continue
        a, b = _paired_counts(rows, task, arm, baseline)
        family.append(
            _pooled_comparison_row(a, b, arm, task, name, margin, alpha, n_boot, n_perm, seed)
            | {"higher_is_better": True}
        )
    return scored, family


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
    higher_is_better: Mapping[tuple[str, str], bool] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-arm scores and arm-vs-baseline comparisons of a study's per-example scores.

    Returns ``(scores, comparisons)`` with columns SCORE_COLUMNS and COMPARISON_COLUMNS.

    ``scores`` has one row per (arm, task, metric) with data. Its CI is a cluster bootstrap over
    subjects when the task has at least two subjects, else Wilson for a binary metric (all values
    0/1, judged over all arms of the task), else a percentile bootstrap.

    ``comparisons`` has one row per non-baseline arm and (task, metric) of the task, items paired
    by :func:`pair` (a ValueError from it, e.g. different items, propagates). ``diff`` is arm
    minus baseline, with a (1 - alpha) CI and a (1 - 2 alpha) equivalence interval judged
    against +/- ``margin`` (metric units):

    * binary metric, no subjects: McNemar's test (exact up to 25 discordant pairs); CI and
      equivalence interval are Tango's score interval (:func:`tango_ci`);
    * continuous metric, no subjects: the sign-flip permutation test; a bootstrap CI and the
      t-interval of :func:`tost`, both widened to at least the zero-change floor, R times
      :func:`zero_change_bound` with R = :func:`value_range` of the metric's values;
    * a task with at least two subjects (any metric): the subject-level sign-flip permutation
      test (:func:`cluster_permutation_test`); cluster bootstrap CI and equivalence interval
      (:func:`cluster_bootstrap_equivalence`), both widened to the same floor.
    * an extraction task (its items score the counts tp, fp, fn, :func:`extraction_counts`):
      the counts are not compared one by one; the corpus metrics micro_f1, precision and
      recall are made from the counts pooled over items, scored with :func:`pooled_bootstrap_ci`
      and compared by the paired permutation test of :func:`pooled_permutation_test`, a paired
      bootstrap CI and equivalence interval (:func:`paired_pooled_bootstrap`), both floored.
      Its per-item metrics (f1: per-sentence macro-F1; parsed: the JSON parse rate) are
      compared as any other metric.

    ``tost_p`` is the p-value of the equivalence test (``tost_p < alpha`` iff ``equivalent``).
    ``mdd`` is the minimum detectable difference at 80 % power from the sd of the differences.
    ``verdict`` is from :func:`verdict`, and :func:`check_verdicts` is run on the table.
    ``higher_is_better`` maps (task, metric) to the metric's direction (default: higher is
    better); a "better" lower-is-better row has a difference below 0. Numbers are never
    flipped: ``diff`` and its intervals are always arm minus baseline.

    Multiplicity: Holm's correction is applied per (task, metric) family, across the arms
    compared with the baseline on it. Tasks answer separate questions and are reported
    separately; the metrics of one task (acc, acc_norm) are near-duplicate readings of the same
    answers, so they are not pooled into one family either. Equivalence is not adjusted (each
    equivalence claim is an intersection-union test).

    Arms or tasks without data are not dropped: a non-baseline arm lacking rows for a (task,
    metric) — or a task whose baseline rows are absent — gets a row with verdict "missing"
    (n = 0, NaN evidence); a task with no rows at all gets one such row per arm with metric None.
    ``arms`` and ``tasks`` list what is expected (default: those present, in order of first
    appearance); the baseline is never compared with itself.

    Random draws are seeded per (purpose, arm, task, metric) from ``seed``, so a result does not
    change when other arms or tasks are added.
    """
    _check_alpha(alpha)
    _check_margin(margin)
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
        extraction = extraction_counts(task_rows)
        if extraction:  # the counts are pooled (below), not compared one by one
            metrics = [m for m in metrics if m not in COUNTS]
        for metric in metrics:
            if metric is None:
                comparison_rows += [
                    _missing_comparison(a, task, None) | {"higher_is_better": True}
                    for a in arm_list
                    if a != baseline
                ]
                continue
            rows = task_rows[task_rows["metric"] == metric]
            hib = (higher_is_better or {}).get((task, metric), True)
            binary = is_binary(rows["value"])
            span = value_range(rows["value"])
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
                    family.append(
                        _missing_comparison(arm, task, metric) | {"higher_is_better": hib}
                    )
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
                        span,
                        margin,
                        alpha,
                        n_boot,
                        n_perm,
                        seed,
                    )
                    | {"higher_is_better": hib}
                )
            comparison_rows += _decided(family, margin, alpha, hib)
        if extraction:
            for name in POOLED:
                scored, family = _pooled_family(
                    task_rows, task, name, arm_list, baseline, margin, alpha, n_boot, n_perm, seed
                )
                score_rows += scored
                comparison_rows += _decided(family, margin, alpha, True)

    scores = pd.DataFrame(score_rows, columns=list(SCORE_COLUMNS))
    comparisons = pd.DataFrame(comparison_rows, columns=list(COMPARISON_COLUMNS))
    scores["n"] = scores["n"].astype("int64")
    comparisons["n"] = comparisons["n"].astype("int64")
    comparisons["equivalent"] = comparisons["equivalent"].astype("boolean")
    comparisons["higher_is_better"] = comparisons["higher_is_better"].astype(bool)
    check_verdicts(comparisons, margin, alpha)
    return scores, comparisons
