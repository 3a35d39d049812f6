"""The decision policy: an arm's verdict per task, and the arm a rule recommends."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from quantstudy import policy

# --------------------------------------------------------------------------- recommend


ROWS = [
    {"arm": "base", "memory_bytes": 16e9, "speed_ratio": 1.0, "verdicts": {}},
    {
        "arm": "int8",
        "memory_bytes": 8e9,
        "speed_ratio": 0.6,
        "verdicts": {"a": "equivalent", "b": "equivalent"},
    },
    {
        "arm": "nf4",
        "memory_bytes": 4.5e9,
        "speed_ratio": 0.8,
        "verdicts": {"a": "equivalent", "b": "inconclusive"},
    },
    {
        "arm": "gptq",
        "memory_bytes": 4.4e9,
        "speed_ratio": 1.7,
        "verdicts": {"a": "better", "b": "worse"},
    },
    {
        "arm": "awq",
        "memory_bytes": 4.6e9,
        "speed_ratio": 1.5,
        "verdicts": {"a": "equivalent", "b": "better"},
    },
]


def test_recommend_rules():
    r = policy.recommend(ROWS, "smallest-equivalent")
    assert r.arm == "awq" and set(r.candidates) == {"int8", "awq"} and "awq" in r.reason
    assert policy.recommend(ROWS, "smallest-not-worse").arm == "nf4"
    assert policy.recommend(ROWS, "fastest-equivalent").arm == "awq"
    wide = pd.DataFrame(
        [{k: v for k, v in r.items() if k != "verdicts"} | r["verdicts"] for r in ROWS]
    )
    assert policy.recommend(wide, "smallest-equivalent").arm == "awq"


def test_recommend_none_and_missing():
    rows = [
        {"arm": "x", "memory_bytes": 1e9, "speed_ratio": math.nan, "verdicts": {"a": "worse"}},
        {"arm": "y", "memory_bytes": 2e9, "speed_ratio": math.nan, "verdicts": {"b": "equivalent"}},
    ]
    r = policy.recommend(rows, "smallest-equivalent")
    assert r.arm is None and "worse on a" in r.reason and "missing on a" in r.reason
    ok = [
        {"arm": "y", "memory_bytes": 2e9, "speed_ratio": math.nan, "verdicts": {"b": "equivalent"}}
    ]
    r = policy.recommend(ok, "fastest-equivalent")
    assert r.arm is None and "speed_ratio" in r.reason
    with pytest.raises(ValueError, match="unknown decision rule"):
        policy.recommend(ROWS, "cheapest")


def test_task_verdicts_combines_metrics_conservatively():
    comp = pd.DataFrame(
        {
            "arm": ["q"] * 4,
            "task": ["a", "a", "b", "b"],
            "metric": ["acc", "acc_norm"] * 2,
            "verdict": ["better", "equivalent", "equivalent", "worse"],
        }
    )
    assert policy.task_verdicts(comp) == {"q": {"a": "equivalent", "b": "worse"}}
    assert policy.task_verdicts(comp, {"b": "acc"}) == {"q": {"a": "equivalent", "b": "equivalent"}}


# --------------------------------------------------------------------------- task families


def _family_comparisons() -> pd.DataFrame:
    """Deciding rows: nf4 is worse on the extraction task ner, every other verdict passes."""
    rows = []
    for arm, verdicts in [("int8", {"mmlu": "inconclusive", "ner": "inconclusive"}),
                          ("nf4", {"mmlu": "inconclusive", "ner": "worse"})]:  # fmt: skip
        for task, v in verdicts.items():
            diff = -0.032 if v == "worse" else -0.004
            rows.append({"arm": arm, "task": task, "metric": "micro_f1" if task == "ner" else "acc",
                         "verdict": v, "diff": diff, "diff_ci_low": diff - 0.025,
                         "diff_ci_high": diff + 0.025 if v != "worse" else -0.007,
                         "p_holm": 0.032 if v == "worse" else 0.6, "higher_is_better": True})  # fmt: skip
    return pd.DataFrame(rows)


FAMILY_ROWS = [
    policy.DecisionRow("int8", 8e9, 0.6, {"mmlu": "inconclusive", "ner": "inconclusive"}),
    policy.DecisionRow("nf4", 4.5e9, 0.8, {"mmlu": "inconclusive", "ner": "worse"}),
]


def test_a_family_names_the_workload_an_arm_is_only_good_for():
    """Q8 by default; Q4 only where no extraction task, tied to Q4's loss on the NER task."""
    families = {"extraction": {"tasks": ["ner"], "require": "not-worse"}}
    r = policy.recommend_by_family(
        FAMILY_ROWS, "smallest-not-worse", families, _family_comparisons()
    )
    assert r.arm == "int8"  # nf4 is worse on ner
    (c,) = r.conditions
    assert (c.family, c.tasks, c.arm) == ("extraction", ("ner",), "nf4")
    assert c.finding == "worse on ner micro_f1: -0.032 (95% CI -0.057 to -0.007, Holm p = 0.032)"
    # without the family the same rule gives the same default and no condition
    assert policy.recommend(FAMILY_ROWS, "smallest-not-worse").arm == "int8"


def test_a_family_requirement_replaces_the_rules_on_its_tasks():
    rows = [policy.DecisionRow("nf4", 4.5e9, 0.8, {"mmlu": "equivalent", "ner": "inconclusive"})]
    # the rule alone needs equivalence on ner too
    assert policy.recommend(rows, "smallest-equivalent").arm is None
    relaxed = policy.recommend(rows, "smallest-equivalent", {"ner": "not-worse"})
    assert relaxed.arm == "nf4" and "as its family requires" in relaxed.reason
    strict = policy.recommend(FAMILY_ROWS, "smallest-not-worse", {"ner": "equivalent"})
    assert strict.arm is None  # neither is equivalent on ner
    with pytest.raises(ValueError, match="unknown requirement"):
        policy.recommend(rows, "smallest-equivalent", {"ner": "no-loss"})


def test_no_arm_by_default_but_one_without_the_family():
    families = {"extraction": {"tasks": ["ner"], "require": "equivalent"}}
    r = policy.recommend_by_family(
        FAMILY_ROWS, "smallest-not-worse", families, _family_comparisons()
    )
    assert r.arm is None
    (c,) = r.conditions
    assert c.arm == "nf4" and c.finding.startswith("worse on ner micro_f1")
    # the summary says both, each tied to its finding
    from quantstudy.report import summary_sentences
    from quantstudy.study import Analysis

    decision = pd.DataFrame({"arm": ["int8"], "role": ["candidate"], "status": ["ok"],
                             "verdict:ner": ["inconclusive"], "speed_vs_baseline": [math.nan],
                             "caveat": [""], "speed_measure": [""]})  # fmt: skip
    empty = pd.DataFrame(columns=["task", "metric", "n", "mdd_min", "mdd_median", "mdd_max"])
    first = summary_sentences(decision, r, empty, Analysis(), "base")[0]
    assert "no arm by default; *nf4* only where no extraction task (worse on ner" in first


def test_a_family_whose_removal_changes_nothing_adds_no_condition():
    families = {"knowledge": {"tasks": ["mmlu"], "require": "not-worse"}}
    r = policy.recommend_by_family(
        FAMILY_ROWS, "smallest-not-worse", families, _family_comparisons()
    )
    assert r.arm == "int8" and r.conditions == ()
