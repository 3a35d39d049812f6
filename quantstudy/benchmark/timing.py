"""How a call is timed, and what is made of the timed samples: the device timer (CUDA events, or
perf_counter on the CPU), A B A B interleaving, summary statistics and ratios to the baseline,
and the memory bandwidth that the decode roofline divides by."""

from __future__ import annotations

import functools
import gc
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import torch

T = TypeVar("T")
Memory = dict[str, int]
TimerFn = Callable[[Callable[[], Any], Callable[[], Any] | None], tuple[float, Memory | None]]
"""A timer: (run, setup) -> (milliseconds of run, its CUDA memory record or None)."""


def stats(samples: Sequence[float]) -> dict[str, Any] | None:
    """Median, min, max and the samples themselves; None for no samples."""
    if not samples:
        return None
    values = [float(x) for x in samples]
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
        "samples": values,
    }


def interleave(fns: Mapping[str, Callable[[], T]], repeats: int) -> dict[str, list[T]]:
    """Call every function once per repeat, in the mapping's order (A B A B …); their results by name."""
    out: dict[str, list[T]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            out[name].append(fn())
    return out


def ratio_to_baseline(arm: Sequence[float], baseline: Sequence[float]) -> float | None:
    """median(arm) / median(baseline), the arm's figure relative to the baseline's; None if undefined."""
    if not arm or not baseline:
        return None
    denominator = statistics.median(baseline)
    if denominator == 0:
        return None
    return statistics.median(arm) / denominator


def paired_ratios(arm: Sequence[float], baseline: Sequence[float]) -> dict[str, Any] | None:
    """Stats of arm[i] / baseline[i] over the interleaved repeats (each pair ran back to back)."""
    if not arm or len(arm) != len(baseline) or any(b == 0 for b in baseline):
        return None
    return stats([a / b for a, b in zip(arm, baseline, strict=True)])


def per_second(count: int, ms: float) -> float:
    """A count per second from milliseconds (a zero time counts as a microsecond)."""
    return count / (max(ms, 1e-6) / 1e3)


def free_memory(device: torch.device, full: bool = False) -> None:
    """Return freed blocks to the device. Tensors die by reference counting; a full garbage
    collection (slow with large heaps) only where cycles may hold them: after an error, or once
    a model is dropped."""
    gc.collect(2 if full else 1)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (on CUDA; the CPU runs synchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def max_memory(*records: dict[str, int] | None) -> dict[str, int] | None:
    """The key-wise maximum of memory records (None ones skipped); None when there are none."""
    records = [r for r in records if r]
    if not records:
        return None
    return {key: max(r[key] for r in records) for key in records[0]}


class Timer:
    """Times one call on a device: CUDA events around it (after a synchronize) on CUDA, with the
    peak allocated/reserved memory of the call; perf_counter on the CPU (no memory record).
    `setup` runs first, untimed."""

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)

    def __call__(
        self, run: Callable[[], Any], setup: Callable[[], Any] | None = None
    ) -> tuple[float, Memory | None]:
        if setup is not None:
            setup()
        if self.device.type != "cuda":
            start = time.perf_counter()
            run()
            return (time.perf_counter() - start) * 1e3, None
        torch.cuda.synchronize(self.device)
        before = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        run()
        end.record()
        end.synchronize()
        memory = {
            "allocated_before_bytes": before,
            "peak_allocated_bytes": torch.cuda.max_memory_allocated(self.device),
            "peak_reserved_bytes": torch.cuda.max_memory_reserved(self.device),
        }
        return begin.elapsed_time(end), memory


def measure_bandwidth(
    device: torch.device | str,
    nbytes: int | None = None,
    warmup: int = 3,
    repeats: int = 10,
    timer: TimerFn | None = None,
) -> dict[str, Any]:
    """Memory bandwidth by a device-to-device copy of `nbytes` (read + write bytes / time).
    Default size 1 GiB per buffer on CUDA (far above any L2 cache), 256 MiB on the CPU."""
    device = torch.device(device)
    if nbytes is None:
        nbytes = (1 << 30) if device.type == "cuda" else (256 << 20)
    timer = timer or Timer(device)
    src = torch.ones(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    copy_once = functools.partial(dst.copy_, src)
    for _ in range(warmup):
        copy_once()
    samples = []
    for _ in range(repeats):
        ms, _ = timer(copy_once, None)
        samples.append(2 * nbytes / (ms / 1e3) / 1e9 if ms > 0 else math.inf)
    del src, dst, copy_once
    free_memory(device)
    finite = [s for s in samples if math.isfinite(s)]
    return {
        "method": "torch copy_ between two device buffers; (read + write) bytes / time",
        "buffer_bytes": nbytes,
        "bytes_moved_per_copy": 2 * nbytes,
        "gb_per_s": stats(finite),
    }
