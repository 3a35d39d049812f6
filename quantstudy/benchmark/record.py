"""The benchmark record (results/{study}/bench/{arm}.json): its schema, and the one module that
writes and reads it. Every record is checked against `schemas/benchmark.schema.yaml` when it is
written and when it is read; aggregate, compare, report and plots read records only here.

A benchmark job that failed leaves a failure record in place of its output (quantstudy.records):
`read` returns it as it is, `read_many` leaves it out, as `records.successes` does.

Imports neither torch nor the rest of the benchmark package.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from .. import records
from ..provenance import write_json

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas" / "benchmark.schema.yaml"
BENCH_SCHEMA: dict[str, Any] = yaml.safe_load(SCHEMA_PATH.read_text())
SCHEMA_ID: str = BENCH_SCHEMA["$id"]


class InvalidRecord(ValueError):
    """A benchmark record does not match the schema; the message names the file and the field."""


@functools.cache
def _validator():
    import jsonschema

    return jsonschema.Draft202012Validator(BENCH_SCHEMA)


def validate(record: Mapping[str, Any], where: Path | str = "benchmark record") -> None:
    """Raise InvalidRecord, naming `where` and the most telling wrong field, unless the record
    matches the schema (JSON values only: a NaN or an infinity is not one)."""
    from jsonschema.exceptions import best_match

    errors = list(_validator().iter_errors(record))
    if errors:
        error = best_match(errors)
        field = ".".join(map(str, error.absolute_path)) or "(top level)"
        raise InvalidRecord(
            f"{where}: not a benchmark record of schema {SCHEMA_ID} ({len(errors)} problem(s)); "
            f"at {field}: {error.message[:300]}"
        )
    try:
        json.dumps(record, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise InvalidRecord(f"{where}: {error}") from error


def write(path: Path | str, record: Mapping[str, Any]) -> None:
    """Validate the record and write it as JSON (sorted keys, parents created). A record that
    does not match is not written there (InvalidRecord): it is kept beside, as
    `<name>.invalid.json`, so that the measurement is not lost with the job."""
    try:
        validate(record, path)
    except InvalidRecord:
        path = Path(path)
        write_json(path.with_name(path.name.removesuffix(".json") + ".invalid.json"), record)
        raise
    write_json(path, record)


def read(path: Path | str) -> dict[str, Any]:
    """The record at `path`, validated; a failure record is returned as it is (not validated)."""
    record = records.read(path)
    if not records.is_failure(record):
        validate(record, path)
    return record


def read_many(paths: Iterable[Path | str]) -> list[dict[str, Any]]:
    """The validated records of the paths that hold real outputs, in order; failure records left
    out (`records.failures` lists them)."""
    return [r for r in map(read, paths) if not records.is_failure(r)]
