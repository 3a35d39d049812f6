"""Helpers for the demo study's local lm-eval tasks (demo_capitals, demo_passage_qa).

Data paths
----------
lm-eval hands ``dataset_kwargs`` straight to ``datasets.load_dataset``, which resolves a
relative ``data_files`` path against the *current working directory*, not the YAML's
folder. To make the tasks work from any CWD, the YAMLs take the path from this module:

    data_files:
      test: !function utils.CAPITALS_JSONL

lm-eval's ``!function`` tag imports ``utils.py`` from the YAML's own folder and returns
``getattr(module, name)``; for a string attribute that is simply the absolute path below.

Scoring (demo_passage_qa)
-------------------------
SQuAD/CoQA answer normalisation (lowercase, drop punctuation, drop the articles
a/an/the, collapse whitespace), exact match on normalised strings and F1 over the bag
of normalised tokens; the best score over a doc's acceptable answers is taken.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent / "data"
CAPITALS_JSONL = str(DATA_DIR / "capitals.jsonl")
PASSAGE_QA_JSONL = str(DATA_DIR / "passage_qa.jsonl")

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


# ---------------------------------------------------------------- normalisation
def normalize_answer(s: str) -> str:
    """SQuAD v1.1 / CoQA normalisation (same steps, same order)."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def get_tokens(s: str) -> list[str]:
    return normalize_answer(s).split() if s else []


def exact_match(gold: str, pred: str) -> float:
    return float(normalize_answer(gold) == normalize_answer(pred))


def f1_score(gold: str, pred: str) -> float:
    gold_toks, pred_toks = get_tokens(gold), get_tokens(pred)
    if not gold_toks or not pred_toks:
        # SQuAD convention: both empty -> 1, exactly one empty -> 0
        return float(gold_toks == pred_toks)
    common = Counter(gold_toks) & Counter(pred_toks)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_toks)
    recall = num_same / len(gold_toks)
    return 2 * precision * recall / (precision + recall)


def clean_prediction(text: str) -> str:
    """First line of the generation, surrounding whitespace removed."""
    text = text.strip()
    return text.split("\n", 1)[0].strip()


def score(golds: list[str], pred: str) -> dict[str, float]:
    pred = clean_prediction(pred)
    return {
        "f1": max(f1_score(g, pred) for g in golds),
        "em": max(exact_match(g, pred) for g in golds),
    }


# ---------------------------------------------------------------- demo_passage_qa
def qa_doc_to_text(doc: dict) -> str:
    """CoQA-style prompt: passage, the answered turns, then the open question."""
    parts = [doc["passage"], ""]
    for turn in doc["history"]:
        parts += [f"Q: {turn['question']}", f"A: {turn['answer']}", ""]
    parts += [f"Q: {doc['question']}", "A:"]
    return "\n".join(parts)


def qa_doc_to_target(doc: dict) -> str:
    return doc["answer"]


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    golds = doc.get("answers") or [doc["answer"]]
    return score(golds, results[0])
