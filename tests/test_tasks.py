"""Tests for the demo study's local lm-eval tasks (tasks/demo/).

No model is evaluated here: data generation, data sanity, the F1/EM scorer, and
lm-eval's task discovery/building from `tasks/` only.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TASKS_DIR = REPO / "tasks"
DEMO_DIR = TASKS_DIR / "demo"
DATA_DIR = DEMO_DIR / "data"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def _load_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


make_data = _load_module("demo_make_data", DEMO_DIR / "make_data.py")
utils = _load_module("demo_task_utils", DEMO_DIR / "utils.py")


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def capitals() -> list[dict]:
    return _read_jsonl(DATA_DIR / make_data.CAPITALS_FILE)


@pytest.fixture(scope="module")
def passage_qa() -> list[dict]:
    return _read_jsonl(DATA_DIR / make_data.PASSAGE_QA_FILE)


# ------------------------------------------------------------------ (a) reproducible
def test_generator_reproduces_committed_files(tmp_path):
    assert make_data.main(["--out", str(tmp_path)]) == 0
    expected = {make_data.CAPITALS_FILE, make_data.PASSAGE_QA_FILE, make_data.NER_FILE}
    assert {p.name for p in tmp_path.iterdir()} == expected
    for name in sorted(expected):
        assert (tmp_path / name).read_bytes() == (DATA_DIR / name).read_bytes(), (
            f"{name} differs from `python tasks/demo/make_data.py` output; rerun it"
        )


def test_generator_is_deterministic_in_process():
    assert make_data.build_all() == make_data.build_all()


def test_check_mode(tmp_path):
    assert make_data.main(["--check"]) == 0  # committed files are current
    assert make_data.main(["--check", "--out", str(tmp_path)]) == 1  # missing files


# ------------------------------------------------------------------ (b) data sanity
def test_capitals_items(capitals):
    assert len(capitals) >= 200
    ids = [d["id"] for d in capitals]
    assert len(set(ids)) == len(ids)
    for d in capitals:
        assert set(d) >= {"id", "question", "choices", "label", "answer"}
        assert len(d["choices"]) == 4
        assert len(set(d["choices"])) == 4, d["id"]
        assert isinstance(d["label"], int) and 0 <= d["label"] < len(d["choices"])
        assert d["choices"][d["label"]] == d["answer"]
    # every correct position is used (answers are not always in one slot)
    assert {d["label"] for d in capitals} == {0, 1, 2, 3}


def test_capitals_facts_are_consistent(capitals):
    # one capital per country and vice versa
    countries = [c for c, _ in make_data.COUNTRY_CAPITALS]
    caps = [k for _, k in make_data.COUNTRY_CAPITALS]
    assert len(set(countries)) == len(countries)
    assert len(set(caps)) == len(caps)
    by_q = {d["question"]: d["answer"] for d in capitals}
    assert by_q["What is the capital of France?"] == "Paris"
    assert by_q["Tokyo is the capital of which country?"] == "Japan"


def test_passage_qa_items(passage_qa):
    assert len(passage_qa) >= 200
    ids = [d["id"] for d in passage_qa]
    assert len(set(ids)) == len(ids)
    for d in passage_qa:
        assert set(d) >= {"id", "passage", "history", "question", "answer", "answers"}
        assert d["answer"] == d["answers"][0]
        # the answer is a span of the passage (whole words)
        assert re.search(rf"\b{re.escape(d['answer'])}\b", d["passage"]), d["id"]
        for turn in d["history"]:
            assert turn["answer"] in d["passage"], d["id"]
            assert turn["question"] != d["question"]
        assert "\n" not in d["answer"]
    # every question type is represented
    assert {d["qtype"] for d in passage_qa} == set(make_data.QUESTION_TYPES)


def test_passage_qa_prompt_format(passage_qa):
    d = passage_qa[0]
    text = utils.qa_doc_to_text(d)
    assert text.startswith(d["passage"] + "\n\nQ: ")
    assert text.endswith(f"Q: {d['question']}\nA:")
    assert text.count("\nA: ") == len(d["history"])
    assert utils.qa_doc_to_target(d) == d["answer"]


# ------------------------------------------------------------------ (c) F1 / EM
@pytest.mark.parametrize(
    "text, expected",
    [
        ("The Eiffel Tower.", "eiffel tower"),
        ("  a  cat,  an owl & THE dog!  ", "cat owl dog"),
        ("Washington, D.C.", "washington dc"),
        ("theatre", "theatre"),  # articles only as whole words
        ("", ""),
    ],
)
def test_normalize_answer(text, expected):
    assert utils.normalize_answer(text) == expected


def test_exact_match_examples():
    assert utils.exact_match("the Eiffel Tower", "Eiffel tower.") == 1.0
    assert utils.exact_match("Paris", "in Paris France") == 0.0
    assert utils.exact_match("the park", "park") == 1.0


def test_f1_examples():
    # pred tokens [in, paris, france], gold [paris]: P = 1/3, R = 1 -> F1 = 0.5
    assert utils.f1_score("Paris", "in Paris France") == pytest.approx(0.5)
    assert utils.f1_score("the Eiffel Tower", "Eiffel tower.") == pytest.approx(1.0)
    # gold [mushroom, risotto], pred [risotto]: P = 1, R = 1/2 -> F1 = 2/3
    assert utils.f1_score("mushroom risotto", "risotto") == pytest.approx(2 / 3)
    # bag of tokens: order does not matter, repeats count once each
    assert utils.f1_score("apple pie", "pie apple") == pytest.approx(1.0)
    # gold [red], pred [red, red]: common 1, P = 1/2, R = 1 -> 2/3
    assert utils.f1_score("red", "red red") == pytest.approx(2 / 3)
    assert utils.f1_score("Paris", "London") == 0.0
    # SQuAD convention for empty token lists
    assert utils.f1_score("Paris", "") == 0.0
    assert utils.f1_score("the", "a") == 1.0


def test_process_results_cleans_response():
    doc = {"answer": "Lisbon", "answers": ["Lisbon"]}
    # leading space (lm-eval returns the continuation after "A:") must not hurt
    assert utils.process_results(doc, [" Lisbon"]) == {"f1": 1.0, "em": 1.0}
    assert utils.process_results(doc, ["Lisbon.\nQ: next"]) == {"f1": 1.0, "em": 1.0}
    assert utils.process_results(doc, ["\n  Lisbon  "]) == {"f1": 1.0, "em": 1.0}
    r = utils.process_results(doc, [" in Lisbon Portugal"])
    assert r["em"] == 0.0 and r["f1"] == pytest.approx(0.5)
    assert utils.process_results(doc, [""]) == {"f1": 0.0, "em": 0.0}


def test_process_results_takes_best_alternative():
    doc = {"answer": "three", "answers": ["three", "3"]}
    assert utils.process_results(doc, [" 3"]) == {"f1": 1.0, "em": 1.0}
    assert utils.process_results(doc, [" three"]) == {"f1": 1.0, "em": 1.0}
    assert utils.process_results(doc, [" four"]) == {"f1": 0.0, "em": 0.0}


# ------------------------------------------------------------------ (d) lm-eval
@pytest.fixture(scope="module")
def task_dict():
    """Build both tasks the way the workflow does: CWD = repo root, include_path="tasks".

    include_defaults=False only skips indexing lm-eval's ~10k built-in YAMLs (slow);
    discovery and building of local tasks is the same code path.
    """
    pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager, get_task_dict

    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        tm = TaskManager(include_path="tasks", include_defaults=False)
        assert {"demo_capitals", "demo_passage_qa"} <= set(tm.all_tasks)
        return get_task_dict(["demo_capitals", "demo_passage_qa"], tm)
    finally:
        os.chdir(cwd)


def test_lm_eval_builds_from_other_cwd(tmp_path):
    """Data paths come from utils.py (absolute), so the CWD does not matter."""
    pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager, get_task_dict

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        tm = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
        tasks = get_task_dict(["demo_capitals", "demo_passage_qa"], tm)
    finally:
        os.chdir(cwd)
    for name, task in tasks.items():
        files = task.config.dataset_kwargs["data_files"]["test"]
        assert Path(files).is_absolute() and Path(files).parent == DATA_DIR, name
        assert len(list(task.test_docs())) >= 200


def test_lm_eval_builds_capitals(task_dict, capitals):
    task = task_dict["demo_capitals"]
    assert task.OUTPUT_TYPE == "multiple_choice"
    docs = list(task.test_docs())
    assert len(docs) == len(capitals)
    doc = next(d for d in docs if d["question"] == "What is the capital of France?")
    assert task.doc_to_text(doc) == "Question: What is the capital of France?\nAnswer:"
    assert task.doc_to_choice(doc) == doc["choices"]
    assert task.doc_to_choice(doc)[task.doc_to_target(doc)] == "Paris"
    assert {"acc", "acc_norm"} <= set(task.aggregation())


def test_lm_eval_builds_passage_qa(task_dict, passage_qa):
    task = task_dict["demo_passage_qa"]
    assert task.OUTPUT_TYPE == "generate_until"
    docs = list(task.test_docs())
    assert len(docs) == len(passage_qa)
    assert [d["id"] for d in docs] == [d["id"] for d in passage_qa]
    assert task.doc_to_text(docs[0]) == utils.qa_doc_to_text(passage_qa[0])
    assert task.doc_to_target(docs[0]) == passage_qa[0]["answer"]
    gen = task.config.generation_kwargs
    assert gen["until"] == ["\n"] and gen["max_gen_toks"] <= 32
    assert gen["do_sample"] is False
    assert set(task.aggregation()) == {"em", "f1"}
    assert all(task.higher_is_better().values())
    assert task.process_results(docs[0], [" " + docs[0]["answer"]]) == {"f1": 1.0, "em": 1.0}


# ------------------------------------------------------------------ (d) structured extraction
NER_DIR = TASKS_DIR / "ner"
ner_utils = _load_module("ner_task_utils", NER_DIR / "utils.py")


@pytest.fixture(scope="module")
def ner() -> list[dict]:
    return _read_jsonl(DATA_DIR / make_data.NER_FILE)


def test_ner_items(ner):
    """At least 200 sentences, a quarter with no entity, every gold entity a span of its
    sentence, types from the three the prompt names; the prompt's examples are not in the data."""
    assert len(ner) >= 200
    assert len({d["id"] for d in ner}) == len(ner)
    empty = [d for d in ner if not d["entities"]]
    assert len(empty) == len(ner) // 4
    for d in ner:
        for entity, kind in d["entities"]:
            assert entity in d["sentence"], d["id"]
            assert kind in {"person", "company", "city"}
        if not d["entities"]:  # no capitalised word but the first
            assert not any(w[0].isupper() for w in d["sentence"].split()[1:]), d["id"]
    text = (NER_DIR / "demo_ner.yaml").read_text()
    for name in ("Karl Weber", "Fjordline", "Bremen", "Ana Ruiz", "Tom Hale", "Kiel"):
        assert not any(name in d["sentence"] for d in ner), name
        assert name in text


def test_ner_gold_from_conll_tags():
    doc = {"tokens": ["SOCCER", "-", "JAPAN", "GET", "LUCKY", "WIN", ",", "CHINA", "IN",
                      "SURPRISE", "DEFEAT", "."],
           "ner_tags": [0, 0, 5, 0, 0, 0, 0, 1, 0, 0, 0, 0]}  # fmt: skip
    assert ner_utils.gold_entities(doc) == [["JAPAN", "LOC"], ["CHINA", "PER"]]
    assert ner_utils.doc_to_target(doc) == '[["JAPAN", "LOC"], ["CHINA", "PER"]]'
    assert ner_utils.conll_doc_to_text(doc).startswith("Sentence: SOCCER - JAPAN GET")


def test_lm_eval_builds_demo_ner(ner):
    pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager, get_task_dict

    tm = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
    assert "conll2003_ner" in tm.all_tasks  # found; its hub data is not loaded here
    task = get_task_dict(["demo_ner"], tm)["demo_ner"]
    assert task.OUTPUT_TYPE == "generate_until"
    docs = list(task.test_docs())
    assert [d["id"] for d in docs] == [d["id"] for d in ner]
    context = task.fewshot_context(docs[0], num_fewshot=0)
    assert context.startswith("List the people, companies and cities in the sentence as JSON.")
    assert context.endswith(f"Sentence: {ner[0]['sentence']}\nEntities:")
    gen = task.config.generation_kwargs
    assert gen["until"] == ["\n"] and gen["max_gen_toks"] <= 32 and gen["do_sample"] is False
    gold = task.doc_to_target(docs[0])
    scores = task.process_results(docs[0], [" " + gold])
    assert {k: scores[k] for k in ("tp", "fp", "fn", "parsed", "f1")} == {
        "tp": float(len(ner[0]["entities"])), "fp": 0.0, "fn": 0.0, "parsed": 1.0, "f1": 1.0,
    }  # fmt: skip
    agg = task.aggregation()
    items = [[2.0, 1.0, 0.0], [0.0, 0.0, 1.0]]  # pooled: TP 2, FP 1, FN 1
    assert agg["micro_f1"](items) == pytest.approx(4 / 6)
    assert agg["precision"](items) == pytest.approx(2 / 3)
    assert agg["tp"]([1.0, 2.0]) == 3.0
    assert agg["micro_f1"]([[0.0, 0.0, 0.0]]) == 0.0  # undefined: lm-eval's table holds no NaN
    hib = task.higher_is_better()
    assert hib["fp"] is False and hib["micro_f1"] is True
