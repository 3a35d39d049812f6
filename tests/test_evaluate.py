"""How an evaluate job sizes its batch on a retry (the job itself runs in test_workflow)."""

from __future__ import annotations

import pytest
import torch

from quantstudy.evaluate import (
    attempts_path,
    batch_halvings,
    earlier_attempts,
    recording_attempt,
    shrink_batch,
)


def failed(attempt: int, halvings: int, oom: bool) -> dict:
    return {"attempt": attempt, "halvings": halvings, "out_of_memory": oom, "error": "x"}


@pytest.mark.parametrize(
    "attempt,earlier,expected",
    [
        (1, [], 0),
        (1, [failed(1, 0, True)], 0),  # a first attempt never halves
        (2, [failed(1, 0, True)], 1),
        (3, [failed(1, 0, True), failed(2, 1, True)], 2),
        (2, [failed(1, 0, False)], 0),  # not memory: the same batch again
        (3, [failed(1, 0, True), failed(2, 1, False)], 1),
        (2, [], 0),  # killed without a record (e.g. by SLURM): nothing known
    ],
)
def test_a_retry_halves_once_more_only_after_an_out_of_memory(attempt, earlier, expected):
    assert batch_halvings(attempt, earlier) == expected


@pytest.mark.parametrize(
    "size,cap,k,expected",
    [(16, 64, 0, (16, 64)), (16, 64, 1, (8, 64)), (16, 64, 2, (4, 64)), (3, 64, 5, (1, 64)),
     ("auto", 64, 0, ("auto", 64)), ("auto", 64, 2, ("auto", 16)), ("auto", 8, 9, ("auto", 1))],
)  # fmt: skip
def test_shrink_batch_halves_the_size_or_the_auto_search_bound(size, cap, k, expected):
    assert shrink_batch(size, cap, k) == expected


def test_attempts_are_recorded_beside_the_log_and_a_first_attempt_forgets_them(tmp_path):
    log = tmp_path / "qa.log"
    assert attempts_path(log) == tmp_path / "qa.attempts.jsonl"
    with pytest.raises(torch.cuda.OutOfMemoryError):
        with recording_attempt(log, 1, 0):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 GiB")
    with pytest.raises(RuntimeError):
        with recording_attempt(log, 2, 1):
            raise RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate")
    with pytest.raises(KeyError):
        with recording_attempt(log, 3, 1):
            raise KeyError("x")
    records = earlier_attempts(log, 4)
    assert [(r["attempt"], r["halvings"], r["out_of_memory"]) for r in records] == [
        (1, 0, True), (2, 1, True), (3, 1, False),
    ]  # fmt: skip
    assert "CUDA out of memory" in records[0]["error"]
    assert batch_halvings(4, records) == 1
    with recording_attempt(log, 1, 0):  # a success records nothing
        pass
    assert earlier_attempts(log, 1) == [] and not attempts_path(log).exists()


def test_a_local_task_is_built_from_its_folder_alone_and_the_same_as_with_the_registry():
    """The evaluate job indexes lm-eval's registry (14 s on the demo's CPU) only for a task its
    include_path does not define: a local task is built identically without it."""
    from pathlib import Path

    from lm_eval.tasks import get_task_dict

    from quantstudy.evaluate import task_manager

    tasks = str(Path(__file__).resolve().parents[1] / "tasks")
    local = task_manager(tasks, "demo_passage_qa")
    assert set(local.all_tasks) <= {"demo_capitals", "demo_passage_qa", "demo_ner", "conll2003_ner"}
    full = task_manager(tasks, "arc_easy")  # a registry task: the whole index, folder included
    assert {"arc_easy", "demo_passage_qa"} <= set(full.all_tasks)
    for name in ("demo_capitals", "demo_passage_qa"):
        alone = get_task_dict([name], task_manager(tasks, name))[name]
        both = get_task_dict([name], full)[name]
        assert alone.config.to_dict() == both.config.to_dict()
        assert len(alone.eval_docs) == len(both.eval_docs) > 0
