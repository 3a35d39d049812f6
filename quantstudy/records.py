"""A job's outcome on disk: its output, or a failure record where the output goes.

Snakemake has no optional inputs: a job whose input is missing never runs. So that one arm's
failure neither stops the rest of the study nor hides itself, a quantize, evaluate or benchmark
job that fails on its last attempt writes a *failure record* where its output goes (a JSON with
``"status": "failed"``, the stage, the error and the log's path; a job's other outputs empty)
and ends successfully. Everything downstream then runs: a job whose input is a failure record
records its own failure as "upstream" at once, and the analysis shows every failure with its
reason. The next run of the workflow runs every job whose output is a failure record again, with
everything after it, so a failure is never remembered across runs: each such job has a `retry`
param (`retry_token`) that Snakemake's params trigger sees change. It is NO_RETRY, a value
Snakemake leaves out of that trigger, for every job that never failed (so adding it reran
nothing), the failure's own id while a failure record stands, and that id again, kept in the
record, once the retry succeeded. Since the analysis always reads every configured output, its
tables are never older than what they summarise.

A job that dies without writing anything (killed, out of time) fails as any Snakemake job does;
the next run builds its output again because it is missing.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import traceback
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

FAILED = "failed"
ATTEMPTS_ENV = "QUANTSTUDY_ATTEMPTS"
"""How many attempts Snakemake gives a job (its --retries + 1), set by the workflow's main
process when it starts running jobs (SLURM job steps run with --retries 0 and inherit it)."""
RETRY_KEY = "retry_token"
NO_RETRY = ...
"""The `retry` param of a job that never failed: Ellipsis, which Snakemake's params trigger
leaves out (it compares only params of plain types), so the param changes nothing there."""


class UpstreamFailed(RuntimeError):
    """A job's input is a failure record: the job records that at once, on any attempt."""


def read(path: Path | str) -> dict[str, Any]:
    """A job's JSON record (output or failure record)."""
    return json.loads(Path(path).read_text())


def is_failure(record: Mapping[str, Any] | None) -> bool:
    """Whether a record is a failure record."""
    return isinstance(record, Mapping) and record.get("status") == FAILED


def failure_at(path: Path | str) -> dict[str, Any] | None:
    """The failure record at a path, or None (a real output, or nothing there)."""
    try:
        record = read(path)
    except (OSError, ValueError):
        return None
    return record if is_failure(record) else None


def successes(paths: Iterable[Path | str]) -> list[dict[str, Any]]:
    """The records of the paths that hold real outputs, in order; failure records left out."""
    return [r for r in map(read, paths) if not is_failure(r)]


def failures(paths: Iterable[Path | str]) -> list[dict[str, Any]]:
    """The failure records among the paths, in order."""
    return [r for r in map(read, paths) if is_failure(r)]


def quantize_record_path(model_dir: Path | str) -> Path:
    """Where an arm's quantize.json (or its failure record) lies in its model directory."""
    return Path(model_dir) / "quantize.json"


def check_inputs(**records: Path | str | None) -> None:
    """Raise UpstreamFailed naming the first input (by role) that is a failure record."""
    for role, path in records.items():
        failed = failure_at(path) if path else None
        if failed:
            raise UpstreamFailed(f"its {role} failed: {failed['reason']}")


def retry_token(record: Path | str) -> Any:
    """The `retry` param of the job whose record lies here (see the module's docstring)."""
    try:
        found = read(record)
    except (OSError, ValueError):
        return NO_RETRY
    if is_failure(found):
        return f"retry after failure {found['failure_id']}"
    token = found.get(RETRY_KEY) if isinstance(found, Mapping) else None
    return token if isinstance(token, str) else NO_RETRY


def is_last_attempt(attempt: int) -> bool:
    """Whether Snakemake will not retry this attempt of a job (see ATTEMPTS_ENV)."""
    return attempt >= int(os.environ.get(ATTEMPTS_ENV, "1"))


def _short(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}".strip()
    return text if len(text) <= 400 else text[:397] + "..."


@contextlib.contextmanager
def recording_failure(
    stage: str,
    record: Path | str,
    *,
    arm: str,
    task: str | None = None,
    log: Path | str,
    attempt: int = 1,
    retry: Any = NO_RETRY,
    empty: Sequence[Path | str] = (),
    clear: Path | str | None = None,
):
    """Run a job's body; if it fails on its last attempt, or because its input is a failure
    record, write the failure record at `record` (after emptying `clear`, the job's own output
    folder), create the `empty` outputs, and end normally. Earlier attempts re-raise, so
    Snakemake retries them as it would any job. A job that succeeds keeps its `retry` param
    (a retry's token) in its record, so the next run sees the same param."""
    try:
        yield
        if isinstance(retry, str):
            done = read(record)
            done[RETRY_KEY] = retry
            Path(record).write_text(json.dumps(done, indent=2, sort_keys=True) + "\n")
    except Exception as error:  # noqa: BLE001 - every failure of the job is recorded
        upstream = isinstance(error, UpstreamFailed)
        if not (upstream or is_last_attempt(attempt)):
            raise
        if clear is not None:
            shutil.rmtree(clear, ignore_errors=True)
            Path(clear).mkdir(parents=True)
        reason = (
            f"not run: {error}" if upstream else f"{stage} failed: {_short(error)} (log: {log})"
        )
        failure = {
            "status": FAILED,
            "stage": stage,
            "arm": arm,
            "task": task,
            "reason": reason,
            "upstream": upstream,
            "error": "".join(traceback.format_exception(error))[-4000:],
            "log": str(log),
            "attempt": attempt,
            "failed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "failure_id": uuid.uuid4().hex,
        }
        Path(record).parent.mkdir(parents=True, exist_ok=True)
        Path(record).write_text(json.dumps(failure, indent=2, sort_keys=True) + "\n")
        for path in empty:
            Path(path).write_text("")
        with open(log, "a") as f:
            f.write(f"recorded the failure in {record}: {reason}\n")
