"""Structured extraction: scoring an answer (quantstudy.extraction) and the pooled statistics of
an extraction task (quantstudy.stats), on constructed answers whose scores are known."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pandas as pd
import pytest

from quantstudy import extraction as ex
from quantstudy import stats
from quantstudy.compare import sample_rows

# ------------------------------------------------------------------ scoring one answer


@pytest.mark.parametrize(
    "text, expected",
    [
        ('[["Anna", "person"]]', [("Anna", "person")]),
        (
            ' [["Anna", "person"], ["Oslo", "city"]] and more',
            [("Anna", "person"), ("Oslo", "city")],
        ),
        ("[]", []),
        ("  []\n", []),
        ('[[" Anna ", "person "]]', [("Anna", "person")]),
    ],
)
def test_well_formed_answers_parse(text, expected):
    assert ex.parse_entities(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "none",
        "Entities: []",  # text before the list
        '[["Anna", "person"]',  # unclosed
        '[["Anna", "person"], ["Oslo"]]',  # a pair of one
        '[["Anna", "person", "x"]]',
        '[["Anna", 3]]',
        '{"Anna": "person"}',
        '["Anna", "person"]',  # a flat list is not a list of pairs
    ],
)
def test_malformed_answers_do_not_parse(text):
    assert ex.parse_entities(text) is None


def test_counts_are_exact_span_and_type_as_multisets():
    gold = [["Anna Novak", "person"], ["Oslo", "city"], ["Oslo", "city"]]
    # a partial span, a wrong type, one Oslo of two, a duplicate of a single gold entity
    assert ex.entity_counts(gold, [("Anna", "person")]) == (0, 1, 3)
    assert ex.entity_counts(gold, [("Anna Novak", "company")]) == (0, 1, 3)
    assert ex.entity_counts(gold, [("Oslo", "city")]) == (1, 0, 2)
    assert ex.entity_counts([["Oslo", "city"]], [("Oslo", "city")] * 2) == (1, 1, 0)
    assert ex.entity_counts([], []) == (0, 0, 0)


def test_score_of_an_answer():
    gold = [["Anna Novak", "person"], ["Oslo", "city"]]
    s = ex.score(gold, '[["Anna Novak", "person"], ["Bergen", "city"]]')
    assert s == {"tp": 1.0, "fp": 1.0, "fn": 1.0, "parsed": 1.0, "f1": 0.5}
    # a malformed answer claims nothing: gold entities are missed, F1 is 0
    assert ex.score(gold, "Anna Novak (person)") == {
        "tp": 0.0, "fp": 0.0, "fn": 2.0, "parsed": 0.0, "f1": 0.0,
    }  # fmt: skip
    # nothing to find: [] scores 1, anything else 0, a malformed answer 0
    assert ex.score([], " []")["f1"] == 1.0
    assert ex.score([], '[["The farmer", "person"]]') == {
        "tp": 0.0, "fp": 1.0, "fn": 0.0, "parsed": 1.0, "f1": 0.0,
    }  # fmt: skip
    assert ex.score([], "[") == {"tp": 0.0, "fp": 0.0, "fn": 0.0, "parsed": 0.0, "f1": 0.0}


def test_pooled_metrics_and_where_they_stop_applying():
    p = ex.pooled(3.0, 1.0, 2.0)
    assert p["micro_f1"] == pytest.approx(6 / 9)
    assert p["precision"] == pytest.approx(3 / 4)
    assert p["recall"] == pytest.approx(3 / 5)
    none = ex.pooled(0.0, 0.0, 0.0)  # no entity at all, none predicted
    assert all(math.isnan(v) for v in none.values())
    nothing_predicted = ex.pooled(0.0, 0.0, 4.0)
    assert nothing_predicted["micro_f1"] == 0 and nothing_predicted["recall"] == 0
    assert math.isnan(nothing_predicted["precision"])
    arr = ex.pooled(np.array([1.0, 0.0]), np.array([0.0, 0.0]), np.array([1.0, 0.0]))
    assert arr["micro_f1"][0] == pytest.approx(2 / 3) and math.isnan(arr["micro_f1"][1])


def test_bio_tags_to_entities():
    tokens = ["EU", "rejects", "German", "call", "to", "boycott", "British", "lamb", "."]
    tags = ["B-ORG", "O", "B-MISC", "O", "O", "O", "B-MISC", "O", "O"]
    assert ex.bio_entities(tokens, tags) == [["EU", "ORG"], ["German", "MISC"], ["British", "MISC"]]
    tokens = ["Peter", "Blackburn", "in", "New", "York", "City", "Lyon"]
    tags = ["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "I-LOC", "B-LOC"]
    assert ex.bio_entities(tokens, tags) == [
        ["Peter Blackburn", "PER"], ["New York City", "LOC"], ["Lyon", "LOC"],
    ]  # fmt: skip
    # an I- tag that does not continue its type starts an entity (conlleval's rule)
    assert ex.bio_entities(["a", "b", "c"], ["I-PER", "I-ORG", "I-ORG"]) == [
        ["a", "PER"], ["b c", "ORG"],
    ]  # fmt: skip
    assert ex.bio_entities([], []) == []


# ------------------------------------------------------------------ pooled statistics


def brute_force_pooled_p(a: np.ndarray, b: np.ndarray, name: str) -> float:
    """Two-sided p over all 2^n swaps of the two arms' answers, item by item (all items)."""
    n = a.shape[0]

    def metric(c):
        return ex.pooled(*c.sum(axis=0))[name]

    obs = abs(metric(b) - metric(a))
    hits = 0
    for swaps in itertools.product([False, True], repeat=n):
        m = np.array(swaps)[:, None]
        aa, bb = np.where(m, b, a), np.where(m, a, b)
        hits += abs(metric(bb) - metric(aa)) >= obs - 1e-9
    return hits / 2**n


def test_pooled_permutation_test_equals_brute_force():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 3, size=(9, 3)).astype(float)
    b = a.copy()
    b[:6] = rng.integers(0, 3, size=(6, 3))
    for name in ex.POOLED:
        res = stats.pooled_permutation_test(a, b, name)
        assert res.method == "exact"
        assert res.pvalue == pytest.approx(brute_force_pooled_p(a, b, name))


def test_pooled_permutation_test_without_a_changed_item_or_a_defined_metric():
    a = np.array([[1.0, 0, 1], [0, 1, 0]])
    res = stats.pooled_permutation_test(a, a.copy(), "micro_f1")
    assert res.pvalue == 1.0 and res.statistic == 0.0 and res.n_nonzero == 0
    empty = np.zeros((4, 3))
    assert math.isnan(stats.pooled_permutation_test(empty, empty, "micro_f1").pvalue)


def test_pooled_bootstrap_ci_resamples_items_and_pools_again():
    counts = np.array([[2.0, 0, 0], [0, 2, 2], [1, 1, 0], [3, 0, 1]])
    low, high = stats.pooled_bootstrap_ci(counts, "micro_f1", n_boot=4000, seed=5)
    # the same draws by hand: resample rows, pool, take 2 TP / (2 TP + FP + FN)
    idx = np.random.default_rng(5).integers(0, 4, size=(4000, 4))
    tot = counts[idx].sum(axis=1)
    draws = 2 * tot[:, 0] / (2 * tot[:, 0] + tot[:, 1] + tot[:, 2])
    assert (low, high) == pytest.approx(tuple(np.quantile(draws, [0.025, 0.975])))
    # one item, or items all alike: nothing to resample, the interval is the value
    assert stats.pooled_bootstrap_ci(counts[:1], "micro_f1") == (1.0, 1.0)
    same = np.tile([[1.0, 1.0, 0.0]], (30, 1))
    assert stats.pooled_bootstrap_ci(same, "precision") == pytest.approx((0.5, 0.5))
    # nothing: NaN
    assert all(math.isnan(v) for v in stats.pooled_bootstrap_ci(np.zeros((0, 3)), "recall"))
    assert all(math.isnan(v) for v in stats.pooled_bootstrap_ci(np.zeros((5, 3)), "recall"))
    with pytest.raises(ValueError, match="unknown pooled metric"):
        stats.pooled_bootstrap_ci(counts, "accuracy")


# ------------------------------------------------------------------ a study with known answers


def _records(golds: list[list], answers: list[str]) -> list[dict]:
    """Samples-file records of answers scored as the extraction tasks score them."""
    return [
        {
            "task": "ner",
            "doc_id": i,
            "doc_hash": f"h{i}",
            "target": json.dumps(g),
            "response": {"none": [a]},
            "metrics": ex.score(g, a),
        }  # fmt: skip
        for i, (g, a) in enumerate(zip(golds, answers, strict=True))
    ]


def _study(golds, answers_by_arm) -> pd.DataFrame:
    rows = []
    for arm, answers in answers_by_arm.items():
        rows += sample_rows(_records(golds, answers), arm, "ner")
    return pd.DataFrame(rows)


def _spurious_study():
    """200 sentences: 150 with two entities, 50 with none. The baseline finds both entities in
    140 sentences, one in 10 (plus one wrong), and answers [] to every empty sentence; the arm
    answers the same, but adds one spurious entity to every empty sentence."""
    golds, base, arm = [], [], []
    for i in range(200):
        if i % 4 == 3:
            golds.append([])
            base.append("[]")
            arm.append('[["The farmer", "person"]]')
            continue
        g = [[f"Person {i}", "person"], [f"City {i}", "city"]]
        golds.append(g)
        if i % 15 == 0:  # 10 of the 150
            answer = json.dumps([g[0], [f"City {i}", "company"]])
        else:
            answer = json.dumps(g)
        base.append(answer)
        arm.append(answer)
    return golds, base, arm


def test_an_arm_that_adds_one_spurious_entity_to_every_empty_sentence():
    golds, base, arm = _spurious_study()
    df = _study(golds, {"base": base, "arm": arm})
    scores, comp = stats.compare(df, "base", n_boot=2000, n_perm=2000)
    row = comp.set_index("metric").loc
    # counts by hand: the baseline has TP 290, FP 10, FN 10; the arm 50 more FP
    tp, fp, fn = 290, 10, 10
    assert row["precision", "baseline_mean"] == pytest.approx(tp / (tp + fp))
    assert row["precision", "arm_mean"] == pytest.approx(tp / (tp + fp + 50))
    assert row["recall", "diff"] == 0.0  # recall does not move
    micro_base, micro_arm = 2 * tp / (2 * tp + fp + fn), 2 * tp / (2 * tp + fp + 50 + fn)
    assert row["micro_f1", "diff"] == pytest.approx(micro_arm - micro_base)
    # macro-F1: every empty sentence falls from 1 to 0, 50 of 200 items
    assert row["f1", "diff"] == pytest.approx(-50 / 200)
    assert row["f1", "diff"] < row["micro_f1", "diff"] < 0  # macro falls more than micro
    assert row["parsed", "diff"] == 0.0
    # verdicts: precision, micro- and macro-F1 worse; recall not
    assert row["precision", "verdict"] == "worse"
    assert row["micro_f1", "verdict"] == "worse"
    assert row["f1", "verdict"] == "worse"
    assert row["recall", "verdict"] == "inconclusive"
    assert row["recall", "p"] == 1.0
    # the counts themselves are pooled, not compared; every comparison is in the scores
    assert not set(ex.COUNTS) & set(comp["metric"])
    assert set(scores["metric"]) == {"f1", "parsed", "micro_f1", "precision", "recall"}
    s = scores.set_index(["arm", "metric"]).loc
    assert s[("arm", "micro_f1"), "mean"] == pytest.approx(micro_arm)
    assert s[("arm", "micro_f1"), "ci_method"] == "pooled-bootstrap"
    assert s[("arm", "micro_f1"), "ci_low"] < micro_arm < s[("arm", "micro_f1"), "ci_high"]
    stats.check_verdicts(comp, 0.01, 0.05)


def test_an_arm_identical_to_the_baseline_is_not_called_equivalent_on_few_items():
    golds, base, _ = _spurious_study()
    df = _study(golds, {"base": base, "same": list(base)})
    _, comp = stats.compare(df, "base", n_boot=500, n_perm=500)
    pooled_rows = comp[comp["metric"].isin(ex.POOLED)]
    assert (pooled_rows["diff"] == 0).all() and (pooled_rows["p"] == 1.0).all()
    # 200 unchanged items rule out no more than about 3/200 = 0.015 > the 0.01 margin
    floor = stats.zero_change_bound(200, 0.05)
    assert (pooled_rows["eq_high"] >= floor - 1e-12).all()
    assert (pooled_rows["verdict"] == "inconclusive").all()


def test_no_entity_anywhere_leaves_the_pooled_metrics_undefined():
    golds = [[] for _ in range(20)]
    df = _study(golds, {"base": ["[]"] * 20, "arm": ["[]"] * 19 + ["oops"]})
    scores, comp = stats.compare(df, "base", n_boot=200, n_perm=200)
    row = comp.set_index("metric").loc
    for name in ex.POOLED:
        assert math.isnan(row[name, "diff"]) and row[name, "verdict"] == "inconclusive"
    assert row["f1", "diff"] == pytest.approx(-1 / 20)  # the malformed answer scores 0
    assert row["parsed", "diff"] == pytest.approx(-1 / 20)
    assert scores.set_index(["arm", "metric"]).loc[("base", "f1"), "mean"] == 1.0


def test_a_missing_arm_and_different_items_are_named():
    golds, base, arm = _spurious_study()
    df = _study(golds, {"base": base, "arm": arm})
    _, comp = stats.compare(df, "base", arms=["base", "arm", "absent"], n_boot=200, n_perm=200)
    absent = comp[comp["arm"] == "absent"]
    assert set(absent["metric"]) >= set(ex.POOLED) and (absent["verdict"] == "missing").all()
    shifted = df.copy()
    shifted.loc[shifted["arm"] == "arm", "doc_hash"] = "other"
    with pytest.raises(ValueError, match="not a paired comparison"):
        stats.compare(shifted, "base", n_boot=200, n_perm=200)
