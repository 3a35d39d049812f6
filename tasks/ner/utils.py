"""Helpers for the structured-extraction tasks (demo_ner, conll2003_ner): prompt text, gold
answer and per-item scores, the scoring itself in quantstudy.extraction.

Every item's metrics (process_results): tp, fp, fn (exact span and type), parsed (1 when the
answer is one JSON list of [entity, type] pairs) and f1 (the item's own F1, 0 for a malformed
answer). lm-eval aggregates f1 and parsed by their mean (macro-F1, parse rate), the counts by
their sum, and micro_f1, precision and recall from the pooled counts. The samples file keeps
every item's counts, which is what quantstudy's statistics pool and resample.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

try:
    from quantstudy import extraction
except ImportError:  # lm-eval run outside the workflow: the repository holds quantstudy
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from quantstudy import extraction

DEMO_NER_JSONL = str(Path(__file__).resolve().parents[1] / "demo" / "data" / "ner.jsonl")

# CoNLL-2003's ner_tags ClassLabel on the hub (eriktks/conll2003), in its order.
CONLL_TAGS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]


def gold_entities(doc: dict) -> list[list[str]]:
    """The doc's gold [entity, type] pairs: its `entities` (demo_ner), else its BIO tags."""
    if "entities" in doc:
        return [list(e) for e in doc["entities"]]
    return extraction.bio_entities(doc["tokens"], [CONLL_TAGS[t] for t in doc["ner_tags"]])


def conll_doc_to_text(doc: dict) -> str:
    return f"Sentence: {' '.join(doc['tokens'])}\nEntities:"


def doc_to_target(doc: dict) -> str:
    """The gold answer as the model should write it."""
    return json.dumps(gold_entities(doc), ensure_ascii=False)


def process_results(doc: dict, results: list[str]) -> dict:
    scores = extraction.score(gold_entities(doc), results[0])
    counts = [scores[c] for c in extraction.COUNTS]
    return scores | {name: counts for name in extraction.POOLED}


def total(items: list) -> float:
    """The sum of an item count over the items (lm-eval registers no "sum" aggregation)."""
    return float(sum(items))


def _pooled(items: list, name: str) -> float:
    value = extraction.pooled_from_items(items)[name]
    return 0.0 if value != value else value  # lm-eval's results hold no NaN


def micro_f1(items: list) -> float:
    return _pooled(items, "micro_f1")


def precision(items: list) -> float:
    return _pooled(items, "precision")


def recall(items: list) -> float:
    return _pooled(items, "recall")
