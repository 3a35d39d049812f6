"""Evaluate one arm on one lm-eval task and write fixed-name outputs with per-example records.

Every call into lm-eval goes through `run_lm_eval`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from .device import device_record
from .loading import bnb_cpu_record, is_gguf_arm, load_arm
from .memory import is_out_of_memory
from .provenance import code_version, package_versions, write_json
from .study import Task

log = logging.getLogger(__name__)


def batch_size_for(task_spec: Task, baseline_eval: Path | str | None) -> int | str:
    """The batch size an arm runs a task with.

    An integer is used as given. With "auto", the baseline arm (given no `baseline_eval`) lets
    lm-eval find the largest batch that fits, and every other arm reads that number from the
    baseline's results: arms of one comparison must run with the same batch size, since padding
    moves lm-eval's scores.
    """
    if task_spec.batch_size != "auto":
        return task_spec.batch_size
    if baseline_eval is None:
        return "auto"
    return int(json.loads(Path(baseline_eval).read_text())["batch_size_used"])


def attempts_path(log_path: Path | str) -> Path:
    """Where an evaluate job keeps what its failed attempts hit: beside its log, since Snakemake
    deletes a job's log (and outputs) before each attempt."""
    log_path = Path(log_path)
    return log_path.with_name(log_path.name.removesuffix(".log") + ".attempts.jsonl")


def earlier_attempts(log_path: Path | str, attempt: int) -> list[dict[str, Any]]:
    """The records of this job's failed attempts before `attempt`; a first attempt starts afresh
    (an old run's records are deleted)."""
    path = attempts_path(log_path)
    if attempt <= 1:
        path.unlink(missing_ok=True)
        return []
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@contextlib.contextmanager
def recording_attempt(log_path: Path | str, attempt: int, halvings: int):
    """Record a failure of this attempt (whether it ran out of memory) for the next attempt."""
    try:
        yield
    except BaseException as error:
        record = {"attempt": attempt, "halvings": halvings,
                  "out_of_memory": is_out_of_memory(error), "error": repr(error)[:500]}  # fmt: skip
        with open(attempts_path(log_path), "a") as f:
            f.write(json.dumps(record) + "\n")
        raise


def batch_halvings(attempt: int, earlier: list[dict[str, Any]]) -> int:
    """How many times to halve the task's batch size on this attempt of an evaluate job.

    Snakemake retries a failed job (`--retries`: attempt 2, 3, ...). A retry halves the batch
    once more than the attempt before it when that attempt ran out of memory, and keeps its
    batch after any other failure; a first attempt never halves.
    """
    if attempt <= 1 or not earlier:
        return 0
    last = earlier[-1]
    return int(last["halvings"]) + (1 if last["out_of_memory"] else 0)


def shrink_batch(
    batch_size: int | str, max_batch_size: int, halvings: int
) -> tuple[int | str, int]:
    """(batch_size, max_batch_size) halved `halvings` times, never below 1; for "auto" its
    search's upper bound is halved instead."""
    if batch_size == "auto":
        return "auto", max(1, max_batch_size >> halvings)
    return max(1, int(batch_size) >> halvings), max_batch_size


def load_model(model_dir: Path | str, device: str):
    """The saved arm (as every stage loads it, quantstudy.loading: its weights checked against
    its quantize.json first) and its tokenizer."""
    from transformers import AutoTokenizer

    return load_arm(model_dir, device), AutoTokenizer.from_pretrained(model_dir)


def task_manager(include_path: str | None, task: str):
    """lm-eval's task index for one task: the include_path folder alone when the task is a plain
    task defined there (include_path takes precedence over lm-eval's own tasks, so it resolves
    the same), else that folder and lm-eval's registry. Indexing the registry's ~15,000 YAML
    files took 14 s of every evaluate job on a 2-core CPU; a group or tag may name registry
    tasks, so those get the whole index."""
    from lm_eval.tasks import TaskManager

    if include_path:
        local = TaskManager(include_path=include_path, include_defaults=False)
        if task in local.all_subtasks:
            return local
        return TaskManager(include_path=include_path)
    return TaskManager()


def run_lm_eval(
    model,
    tokenizer,
    task: str,
    task_spec: Task,
    batch_size: int | str,
    include_path: str | None,
    max_batch_size: int = 64,
    max_length: int | None = None,
) -> tuple[dict[str, Any], int]:
    """The one call into lm-eval: returns its results dict and the batch size actually used."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    from .llamacpp import LlamaCppLM, LlamaCppModel

    # a GGUF arm: the same HFLM (tokenizer, batching, stops), llama.cpp computing
    lm = (LlamaCppLM if isinstance(model, LlamaCppModel) else HFLM)(
        pretrained=model,
        tokenizer=tokenizer,
        batch_size=batch_size,
        max_batch_size=max_batch_size,
        max_length=max_length,
    )
    detected: list[int] = []
    if batch_size == "auto":
        # lm-eval keeps a detected size for generation tasks in a local variable only: record it.
        detect = lm._detect_batch_size

        def recording(*args, **kwargs):
            size = detect(*args, **kwargs)
            detected.append(int(size))
            return size

        lm._detect_batch_size = recording
    seed = task_spec.seed
    results = lm_eval.simple_evaluate(
        model=lm,
        tasks=[task],
        num_fewshot=task_spec.num_fewshot,
        limit=task_spec.limit,
        log_samples=True,
        apply_chat_template=task_spec.apply_chat_template,
        gen_kwargs=task_spec.gen_kwargs,
        task_manager=task_manager(include_path, task),
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
        bootstrap_iters=1000,
    )
    if results is None:
        raise RuntimeError(f"lm-eval returned no results for task {task!r}")
    used = (
        min(detected) if detected else int(batch_size) if batch_size != "auto" else max_batch_size
    )
    return results, used


def _jsonable(obj: Any) -> Any:
    """lm-eval's results hold functions and numpy values: make them plain JSON."""
    from lm_eval.utils import handle_non_serializable

    return json.loads(json.dumps(obj, default=handle_non_serializable))


def _prompt(sample: dict[str, Any]) -> str | None:
    """The prompt of a logged sample: the context of its first request (every request of a
    multiple-choice item shares it), None when lm-eval logged none."""
    args = sample.get("arguments") or []
    first = args[0] if args else None
    text = first[0] if isinstance(first, list | tuple) and first else None
    return text if isinstance(text, str) else None


def sample_records(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One record per evaluated example: task (subtask for groups), ids, prompt, target,
    response, metrics.

    lm-eval logs one sample per (example, filter); a task with several filters (GSM8K's
    strict-match and flexible-extract) gets one record per example whose metrics are named
    `metric` for the filter "none" and `metric,filter` otherwise.
    """
    records: dict[tuple[str, int], dict[str, Any]] = {}
    for subtask, samples in sorted(results.get("samples", {}).items()):
        keys = [m for m in results["results"].get(subtask, {}) if "," in m and "_stderr" not in m]
        names = sorted({m.split(",")[0] for m in keys})
        for s in samples:
            filt = s.get("filter", "none")
            key = (subtask, s["doc_id"])
            rec = records.setdefault(
                key,
                {
                    "task": subtask,
                    "doc_id": s["doc_id"],
                    "doc_hash": s.get("doc_hash"),
                    "prompt_hash": s.get("prompt_hash"),
                    "target_hash": s.get("target_hash"),
                    "prompt": _prompt(s),
                    "target": s.get("target"),
                    "response": {},
                    "metrics": {},
                },
            )
            rec["response"][filt] = s.get("filtered_resps", s.get("resps"))
            for name in names:
                if name in s:
                    rec["metrics"][name if filt == "none" else f"{name},{filt}"] = s[name]
    return _jsonable([records[k] for k in sorted(records, key=lambda k: (k[0], k[1]))])


def evaluate(
    model_dir: Path | str,
    arm: str,
    task: str,
    task_spec: Task,
    batch_size: int | str,
    include_path: str | None,
    out_json: Path | str,
    out_samples: Path | str,
    device: str | None = None,
    max_batch_size: int = 64,
    max_length: int | None = None,
    halvings: int = 0,
    earlier_attempts: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Evaluate a saved arm on one task; write `{task}.json` and `{task}.samples.jsonl`.

    `halvings` (a retry after an out-of-memory, see `batch_halvings`) halves the batch size, or
    the upper bound of its "auto" search, that many times; the summary records both sizes.
    """
    # a GGUF arm runs in llama.cpp, on the CPU (llama-cpp-python is built without GPU offload)
    gguf = is_gguf_arm(model_dir)
    device = "cpu" if gguf else device or ("cuda" if torch.cuda.is_available() else "cpu")
    configured = batch_size
    batch_size, max_batch_size = shrink_batch(batch_size, max_batch_size, halvings)
    if halvings:
        log.warning(
            "batch size %s halved %d time(s) after an out-of-memory: %s (max %d)",
            configured, halvings, batch_size, max_batch_size,
        )  # fmt: skip
    start = time.perf_counter()
    model, tokenizer = load_model(model_dir, device)
    results, used = run_lm_eval(
        model, tokenizer, task, task_spec, batch_size, include_path, max_batch_size, max_length
    )
    seconds = time.perf_counter() - start
    records = sample_records(results)
    out_samples = Path(out_samples)
    out_samples.parent.mkdir(parents=True, exist_ok=True)
    with open(out_samples, "w") as f:
        for r in records:
            f.write(json.dumps(r, sort_keys=True) + "\n")
    summary = {
        "arm": arm,
        "task": task,
        "task_spec": task_spec.model_dump(exclude_unset=True),  # the config's entry as given
        "batch_size_configured": configured,
        "batch_halvings": halvings,
        "earlier_attempts": earlier_attempts or [],
        "batch_size_requested": batch_size,
        "batch_size_used": used,
        "n_samples": len(records),
        "seconds": seconds,
        "results": _jsonable(results["results"]),
        "groups": _jsonable(results.get("groups", {})),
        "group_subtasks": _jsonable(results.get("group_subtasks", {})),
        "higher_is_better": _jsonable(results.get("higher_is_better", {})),
        "n-samples": _jsonable(results.get("n-samples", {})),
        "versions": _jsonable(results.get("versions", {})),
        "configs": _jsonable(results.get("configs", {})),
        "device": device_record(device)
        | {"used": device, "runtime": "llama.cpp" if gguf else "transformers"}
        | bnb_cpu_record(model),
        "packages": package_versions(),
        "code_version": code_version(),
    }
    write_json(out_json, summary)
    return summary
