"""The largest batch that fits: doubling, then bisection, where an out-of-memory error is the
answer "does not fit"; then the throughput at the batch found."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .modes import ModeSpec, make_runner
from .scenarios import attempt, model_entry, new_result, prompt_ids, throughput
from .timing import free_memory

log = logging.getLogger(__name__)


def largest_batch(try_batch: Callable[[int], bool], start: int = 1, limit: int = 4096) -> int:
    """The largest batch size in [0, limit] for which try_batch holds, assuming it holds below any size
    where it holds: doubling from `start` until it fails or passes `limit`, then bisection.
    0 when not even the smallest size fits."""
    if start < 1 or limit < 1:
        raise ValueError("start and limit must be >= 1")
    fits, fails = 0, None  # largest size known to fit, smallest known to fail
    size = min(start, limit)
    while True:
        if try_batch(size):
            fits = size
            if size >= limit:
                return size
            size = min(size * 2, limit)
        else:
            fails = size
            break
    while fails - fits > 1:
        mid = (fits + fails) // 2
        if try_batch(mid):
            fits = mid
        else:
            fails = mid
    return fits


def next_probe(probes: Sequence[Mapping[str, Any]], start: int, limit: int) -> int | None:
    """The batch size `largest_batch` tries after these probes (the one a dead search died at),
    found by replaying the search on the recorded outcomes; None when it would have ended."""
    seen = {p["batch_size"]: p["fits"] for p in probes}

    class Unprobed(Exception):
        pass

    def replay(batch: int) -> bool:
        if batch not in seen:
            raise Unprobed(batch)
        return seen[batch]

    try:
        largest_batch(replay, start=start, limit=limit)
    except Unprobed as next_batch:
        return next_batch.args[0]
    return None


def largest_batch_for(
    name: str, model, spec: ModeSpec, settings, vocab, timer, device, progress=None
) -> dict[str, Any]:
    """Largest batch that generates without running out of memory, and its throughput.

    `progress`, when given, is called with each probe's record as soon as it is known.
    """
    sec = settings["largest_batch"]
    seed, length, new_tokens = settings["seed"], sec["prompt_length"], sec["new_tokens"]
    probes: list[dict[str, Any]] = []
    failure: list[str] = []

    def try_batch(batch: int) -> bool:
        if failure:
            return False
        result = new_result(0, 1)
        runner = make_runner(model, spec)
        start = time.perf_counter()
        try:
            sample = attempt(
                result,
                lambda: runner.generate(
                    prompt_ids(vocab, batch, length, seed).to(device), new_tokens
                ),
                device,
            )
            if sample is not None:
                attempt(result, lambda: sample(timer), device)
            sample = None
        finally:
            runner.release()
            free_memory(device)
        seconds = time.perf_counter() - start
        if result["error"]:
            failure.append(f"batch {batch}: {result['error']}")
            return False
        fits = not result["oom"]
        probes.append({"batch_size": batch, "fits": fits, "seconds": seconds})
        if progress is not None:
            progress(probes[-1])
        log.info("largest batch, mode %s: batch %d %s", spec.name, batch, "fits" if fits else "OOM")
        return fits

    found = largest_batch(try_batch, start=sec["start"], limit=sec["limit"])
    if failure:
        return {"supported": False, "reason": failure[0]}
    out: dict[str, Any] = {
        "supported": True,
        "batch_size": found,
        "limit": sec["limit"],
        "hit_limit": found >= sec["limit"],
        "prompt_length": length,
        "new_tokens": new_tokens,
        "resident": [name],
        "probes": probes,
        "throughput": None,
    }
    if found:
        ids = prompt_ids(vocab, found, length, seed).to(device)
        scenario = throughput(
            {name: model},
            ids,
            new_tokens,
            spec=spec,
            warmup=sec["warmup"],
            repeats=sec["repeats"],
            timer=timer,
        )
        result = scenario["results"][name]
        if result["error"]:
            return {"supported": False, "reason": f"batch {found}: {result['error']}"}
        out["throughput"] = model_entry(result)
    return out
