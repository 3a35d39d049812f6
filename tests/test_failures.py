"""The failure-mode analysis (quantstudy.failures) on constructed samples files whose flips,
extraction errors and per-subject losses are known."""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from quantstudy import extraction as ex
from quantstudy import failures
from quantstudy.study import Analysis


def _write(root: Path, arm: str, task: str, records: list[dict]) -> Path:
    path = root / arm / f"{task}.samples.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _qa(values: list[float], answers: list[str], subjects: list[str] | None = None) -> list[dict]:
    return [
        {
            "task": subjects[i] if subjects else "qa",
            "doc_id": i,
            "doc_hash": f"h{i}",
            "prompt": f"Question {i}?",
            "target": f"gold {i}",
            "response": {"none": [answers[i]]},
            "metrics": {"acc": v},
        }  # fmt: skip
        for i, v in enumerate(values)
    ]


def _run(tmp_path, files, arms, tasks, analysis=None):
    out = {k: tmp_path / f"{k}.csv" for k in ("flips", "examples", "extraction", "subjects")}
    out["failures_html"] = tmp_path / "failures.html"
    failures.run(files, arms, tasks, "base", analysis or Analysis(), "s", out)
    tables = {k: pd.read_csv(v) for k, v in out.items() if k != "failures_html"}
    return tables, html.unescape(out["failures_html"].read_text())


def test_flips_each_way_with_examples(tmp_path):
    base = [1, 1, 1, 1, 0, 0, 1, 0, 1, 1]
    arm = [1, 0, 0, 1, 1, 0, 0, 0, 1, 1]  # lost items 1, 2, 6; gained item 4
    files = [
        _write(tmp_path, "base", "qa", _qa(base, [f"b{i}" for i in range(10)])),
        _write(tmp_path, "q4", "qa", _qa(arm, [f"a{i}" for i in range(10)])),
    ]
    tables, page = _run(tmp_path, files, ["base", "q4"], ["qa"])
    (row,) = tables["flips"].to_dict("records")
    assert (row["lost"], row["gained"], row["unchanged"], row["n"]) == (3, 1, 6, 10)
    assert row["diff"] == pytest.approx(-0.2)
    ex_rows = tables["examples"]
    lost = ex_rows[ex_rows["direction"] == "lost"]
    assert list(lost["doc_id"]) == [1, 2, 6]  # equal changes: item order
    first = lost.iloc[0]
    assert (first["prompt"], first["target"]) == ("Question 1?", "gold 1")
    assert (first["baseline_answer"], first["arm_answer"]) == ("b1", "a1")
    assert list(ex_rows[ex_rows["direction"] == "gained"]["doc_id"]) == [4]
    assert "Examples: q4 on qa" in page and "Question 1?" in page


def test_an_arm_that_over_extracts_on_empty_sentences(tmp_path):
    """The issue's case: one spurious entity on every sentence with no entity. Precision falls,
    recall does not, and the arm never answers [] where the baseline always does."""
    golds, base, arm = [], [], []
    for i in range(40):
        if i % 4 == 3:
            golds.append([])
            base.append("[]")
            arm.append('[["The farmer", "person"]]')
        else:
            golds.append([[f"P{i}", "person"]])
            base.append(json.dumps(golds[-1]))
            arm.append(json.dumps(golds[-1]))

    def records(answers):
        return [{"task": "ner", "doc_id": i, "doc_hash": f"h{i}", "prompt": f"S{i}",
                 "target": json.dumps(g), "response": {"none": [a]}, "metrics": ex.score(g, a)}
                for i, (g, a) in enumerate(zip(golds, answers, strict=True))]  # fmt: skip

    files = [_write(tmp_path, "base", "ner", records(base)),
             _write(tmp_path, "q4", "ner", records(arm))]  # fmt: skip
    tables, page = _run(tmp_path, files, ["base", "q4"], ["ner"])
    t = tables["extraction"].set_index("arm")
    assert t.loc["base", "n_empty_gold"] == 10 and t.loc["q4", "n_empty_gold"] == 10
    assert t.loc["base", "empty_returned_rate"] == 1.0
    assert t.loc["q4", "empty_returned_rate"] == 0.0
    assert t.loc["q4", "fp_on_empty"] == 10 and t.loc["base", "fp_on_empty"] == 0
    assert t.loc["q4", "precision"] == pytest.approx(30 / 40)
    assert t.loc["q4", "precision_diff"] == pytest.approx(30 / 40 - 1)
    assert t.loc["q4", "recall_diff"] == 0.0
    assert t.loc["q4", "macro_f1"] == pytest.approx(30 / 40)
    assert t.loc["q4", "micro_f1"] == pytest.approx(60 / 70)
    # Wilson interval of 0 of 10, by its formula
    z = sps.norm.isf(0.025)
    assert t.loc["q4", "empty_returned_ci_high"] == pytest.approx(z**2 / (10 + z**2))
    # the flips of an extraction task are counted on its per-item metrics, not on its counts
    assert set(tables["flips"]["metric"]) == {"f1", "parsed"}
    lost = tables["examples"]
    assert set(lost["doc_id"]) <= {3, 7, 11, 15, 19, 23, 27, 31, 35, 39}
    assert (lost["arm_answer"] == '[["The farmer", "person"]]').all()
    assert "sentences with no entity" in page


def test_the_subjects_that_carry_the_loss(tmp_path):
    """Four subjects; the arm loses 20 of 40 items in "algebra" only. Per-subject McNemar p,
    Holm across the four, must name algebra alone."""
    subjects, base, arm = [], [], []
    for name, n, lost in [("algebra", 40, 20), ("law", 40, 1), ("art", 30, 0), ("music", 30, 2)]:
        subjects += [name] * n
        base += [1.0] * n
        arm += [0.0] * lost + [1.0] * (n - lost)
    n = len(base)
    files = [
        _write(tmp_path, "base", "mmlu", _qa(base, ["x"] * n, subjects)),
        _write(tmp_path, "q4", "mmlu", _qa(arm, ["y"] * n, subjects)),
    ]
    tables, page = _run(tmp_path, files, ["base", "q4"], ["mmlu"])
    sub = tables["subjects"].set_index("subject")
    # exact McNemar by hand: k lost, none gained -> p = 2 * 0.5^k (1 when nothing changed)
    raw = {"algebra": 2 * 0.5**20, "law": 1.0, "art": 1.0, "music": 0.5}
    for name, p in raw.items():
        assert sub.loc[name, "p"] == pytest.approx(p)
    # Holm by hand: sorted p's multiplied by 4, 3, 2, 1, made monotone, capped at 1
    assert sub.loc["algebra", "p_holm"] == pytest.approx(4 * raw["algebra"])
    assert sub.loc["music", "p_holm"] == pytest.approx(min(1.0, 3 * 0.5))
    assert list(sub.index[sub["carries_loss"]]) == ["algebra"]
    assert sub.loc["algebra", "diff"] == pytest.approx(-0.5)
    assert "the loss is carried by algebra" in page


def test_no_subject_significant_names_the_largest_losses(tmp_path):
    subjects = ["a"] * 3 + ["b"] * 3
    files = [
        _write(tmp_path, "base", "mmlu", _qa([1.0] * 6, ["x"] * 6, subjects)),
        _write(tmp_path, "q4", "mmlu", _qa([0, 1, 1, 1, 1, 1], ["y"] * 6, subjects)),
    ]
    tables, page = _run(tmp_path, files, ["base", "q4"], ["mmlu"])
    assert not tables["subjects"]["carries_loss"].any()
    assert "no subject's loss is significant after Holm" in page and "a (-0.333)" in page


def test_failed_jobs_and_a_lone_baseline_give_empty_tables(tmp_path):
    files = [_write(tmp_path, "base", "qa", _qa([1.0, 0.0], ["x", "y"])),
             _write(tmp_path, "q4", "qa", [])]  # fmt: skip
    tables, page = _run(tmp_path, files, ["base", "q4"], ["qa"])
    assert all(t.empty for t in tables.values())
    assert "No paired items" in page


def test_answer_text_of_each_kind_of_response():
    assert failures.answer_text({"none": ["Paris"]}) == "Paris"
    # multiple choice: one (loglikelihood, is_greedy) pair per option, per request
    mc = {"none": [[[-3.0, False]], [[-0.5, True]], [[-2.0, False]]]}
    assert failures.answer_text(mc) == "choice 1"
    assert failures.answer_text({"none": [[-1.0, False], [-4.0, False]]}) == "choice 0"
    assert failures.answer_text(None) == "null"
    assert np.isfinite(len(failures.answer_text({"strict-match": [["a", "b"]]})))


def test_a_line_that_is_not_json_names_its_file_and_line(tmp_path):
    path = _write(tmp_path, "base", "qa", _qa([1.0], ["x"]))
    path.write_text(path.read_text() + '{"doc_id": 1, "metrics": \n')
    with pytest.raises(ValueError, match=r"base/qa\.samples\.jsonl, line 2: not a JSON record"):
        failures.read_samples([path])


def test_examples_show_the_largest_changes_first(tmp_path):
    def recs(values):
        return [{"task": "qa", "doc_id": i, "doc_hash": f"h{i}", "prompt": f"Q{i}",
                 "target": "t", "response": {"none": ["a"]}, "metrics": {"f1": v}}
                for i, v in enumerate(values)]  # fmt: skip

    files = [_write(tmp_path, "base", "qa", recs([1.0, 1.0, 1.0, 0.5, 0.2, 0.3])),
             _write(tmp_path, "q4", "qa", recs([0.9, 0.2, 0.6, 0.7, 0.9, 0.3]))]  # fmt: skip
    tables, _ = _run(tmp_path, files, ["base", "q4"], ["qa"])
    ex_rows = tables["examples"]
    assert list(ex_rows[ex_rows["direction"] == "lost"]["doc_id"]) == [1, 2, 0]  # -0.8, -0.4, -0.1
    assert list(ex_rows[ex_rows["direction"] == "gained"]["doc_id"]) == [4, 3]  # +0.7, +0.2
