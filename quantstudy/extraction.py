"""Structured extraction: a model answers with a JSON list of [entity, type] pairs, scored
against the gold list by exact span and type.

A task of this kind (tasks/ner/) scores each item with :func:`score` in its lm-eval
``process_results``, so every item of its samples file carries the counts ``tp``, ``fp``,
``fn`` (true positives, false positives, false negatives), ``parsed`` (1 when the answer was a
well-formed list) and ``f1`` (the item's own F1) as metrics, in the samples schema every task
uses. The statistics pool the counts over items (:func:`pooled`): corpus micro-F1 (the CoNLL
metric), precision and recall; the mean of ``f1`` is per-sentence macro-F1 and the mean of
``parsed`` the JSON parse rate. quantstudy.stats recognises such a task by its count metrics
(:data:`COUNTS`).

This module imports nothing beyond the standard library and numpy, so an lm-eval task's
utils.py can import it.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

COUNTS = ("tp", "fp", "fn")
"""The per-item count metrics of an extraction task, pooled over items by the statistics."""

POOLED = ("micro_f1", "precision", "recall")
"""The corpus metrics made from pooled counts (:func:`pooled`)."""

Entity = tuple[str, str]


def parse_entities(text: str) -> list[Entity] | None:
    """The [entity, type] pairs of a model's answer, or None when it is not one JSON list of
    pairs of strings.

    The answer must start (after whitespace) with a JSON list; text after the list's closing
    bracket is ignored (a model that goes on talking after its answer), text before it is not.
    Each element must be a list of exactly two strings; surrounding whitespace of each string
    is dropped. An empty list is a well-formed answer: no entity.
    """
    text = text.lstrip()
    if not text.startswith("["):
        return None
    try:
        value, _ = json.JSONDecoder().raw_decode(text)
    except ValueError:
        return None
    if not isinstance(value, list):
        return None
    out = []
    for item in value:
        if not (
            isinstance(item, list) and len(item) == 2 and all(isinstance(s, str) for s in item)
        ):
            return None
        out.append((item[0].strip(), item[1].strip()))
    return out


def entity_counts(
    gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]
) -> tuple[int, int, int]:
    """(tp, fp, fn) of predicted against gold (entity, type) pairs, matched exactly as
    multisets: a pair predicted twice but in the gold once is one true and one false positive."""
    g = Counter((str(e), str(t)) for e, t in gold)
    p = Counter((str(e), str(t)) for e, t in predicted)
    tp = sum((g & p).values())
    return tp, sum(p.values()) - tp, sum(g.values()) - tp


def sentence_f1(tp: int, fp: int, fn: int, parsed: bool) -> float:
    """One item's F1: 0 for a malformed answer; 1 when gold and answer are both empty
    (nothing to find, nothing claimed); else 2 tp / (2 tp + fp + fn)."""
    if not parsed:
        return 0.0
    if tp + fp + fn == 0:
        return 1.0
    return 2 * tp / (2 * tp + fp + fn)


def score(gold: Sequence[Sequence[str]], response: str) -> dict[str, float]:
    """The per-item metrics of one answer: tp, fp, fn, parsed (0/1) and f1.

    A malformed answer claims nothing: its gold entities count as false negatives, it adds no
    false positive, and its F1 is 0, also on an item with no gold entity (where an empty
    list would score 1).
    """
    predicted = parse_entities(response)
    tp, fp, fn = entity_counts(gold, predicted or [])
    parsed = predicted is not None
    return {
        "tp": float(tp),
        "fp": float(fp),
        "fn": float(fn),
        "parsed": float(parsed),
        "f1": sentence_f1(tp, fp, fn, parsed),
    }


def _ratio(num: Any, den: Any) -> Any:
    """num / den, NaN where den is 0 (scalars or numpy arrays)."""
    import numpy as np

    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(den > 0, num / np.where(den > 0, den, 1.0), math.nan)
    return float(out) if out.ndim == 0 else out


def pooled(tp: Any, fp: Any, fn: Any) -> dict[str, Any]:
    """Corpus metrics from pooled counts: micro_f1 = 2 TP / (2 TP + FP + FN), precision =
    TP / (TP + FP), recall = TP / (TP + FN). Each is NaN where its denominator is 0 (micro-F1
    with no gold and no predicted entity at all, precision with nothing predicted, recall with
    nothing to find). Works on scalars and, element-wise, on arrays of totals."""
    return {
        "micro_f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
    }


def pooled_from_items(items: Sequence[Sequence[float]]) -> dict[str, float]:
    """:func:`pooled` of per-item (tp, fp, fn) triples summed over the items."""
    tp = sum(float(i[0]) for i in items)
    fp = sum(float(i[1]) for i in items)
    fn = sum(float(i[2]) for i in items)
    return pooled(tp, fp, fn)


def bio_entities(tokens: Sequence[str], tags: Sequence[str]) -> list[list[str]]:
    """[entity, type] pairs of a BIO-tagged sentence (CoNLL-2003's IOB2 tags: B-PER, I-PER, O,
    ...), entity text the tokens joined by one space, in order of appearance. An I- tag that
    does not continue an entity of its type starts one (the CoNLL evaluation's rule)."""
    out: list[list[str]] = []
    current: list[str] | None = None
    kind = None
    for token, tag in zip(tokens, tags, strict=True):
        if tag == "O" or not tag:
            current, kind = None, None
            continue
        prefix, _, typ = tag.partition("-")
        if prefix == "B" or current is None or typ != kind:
            current, kind = [token], typ
            out.append([token, typ])
        else:
            current.append(token)
            out[-1][0] = " ".join(current)
    return out
