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
