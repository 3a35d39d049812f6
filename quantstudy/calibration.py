"""Calibration text for GPTQ/AWQ: which texts of a file or dataset count as samples.

One definition, used by the quantize job and by the config check before any job runs, so the
check counts exactly the samples the job would draw from.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path


def usable_texts(texts: Iterable[str]) -> list[str]:
    """The samples among texts: each stripped of surrounding whitespace, empty ones dropped."""
    return [t.strip() for t in texts if t.strip()]


def read_calibration_file(path: Path | str, text_field: str = "text") -> list[str]:
    """The samples of a local file: one per non-empty line, or per .jsonl row's `text_field`.

    Raises ValueError naming the line of a .jsonl row that is not JSON or lacks the field.
    """
    path = Path(path)
    lines = path.read_text().splitlines()
    if path.suffix != ".jsonl":
        return usable_texts(lines)
    texts = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} line {number}: not JSON ({e})") from None
        if not isinstance(row, dict) or text_field not in row:
            raise ValueError(f"{path} line {number}: no field {text_field!r}")
        texts.append(str(row[text_field]))
    return usable_texts(texts)
