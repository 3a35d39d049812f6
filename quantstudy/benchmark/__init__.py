"""Speed and memory of one arm, measured beside the baseline in the same job (benchmark stage).

One job loads the arm and the baseline, and measures them alternately (A B A B … per scenario
repeat, A = arm, B = baseline) so that clock, thermal and neighbour drift hits both alike; the
arm's speed is reported in absolute units and as a ratio to the baseline of the same job.

Scenarios, each in two execution modes:
- ``eager``: ``model.generate`` with the dynamic cache, greedy; prefill is one forward.
- ``static``: an own decode loop over transformers' ``StaticCache``; on CUDA each forward is
  ``torch.compile(mode="reduce-overhead", fullgraph=True)``d (CUDA graphs), on the CPU it runs
  uncompiled unless the settings say otherwise. The JSON says which (``compiled``). Each model's
  step is built its fastest way first (`scenarios.build_steps`): q/k/v and gate/up projections
  fused where its layers allow (`fusion`), and the compile mode, where the settings list more
  than one, the one its step decoded fastest with; the JSON's ``builds`` say how.
- ``dense``: the static mode on a GPTQ/AWQ or FP8-dynamic arm as transformers runs it (layers
  decompressed), where the arm otherwise runs an int4 kernel (`quantstudy.int4`) or an FP8 one
  (`quantstudy.fp8`).

Measured: prefill latency (batch 1, several prompt lengths), decode latency (ms per generated
token, prefill excluded), generation throughput at several batch sizes, the largest batch that
fits (doubling, then bisection; an out-of-memory error is a measurement), memory (footprint,
peak allocated/reserved per scenario on CUDA), load time, bytes on disk, and a decode roofline:
weight bytes read per token / memory bandwidth measured in the same job by a device-to-device
copy. A mode an arm cannot run is recorded as ``{"supported": false, "reason": ...}``.

Compressed-tensors arms (GPTQ/AWQ) load onto an int4 kernel where ``settings.int4_kernel`` picks
one (tinygemm on CUDA by default), FP8-dynamic arms onto ``aten._scaled_mm`` where
``settings.fp8_kernel`` does (on CUDA GPUs with FP8 by default); otherwise they decompress to dense weights on their first
forward (done in a warm-up right after loading, so memory and speed are those of what actually
runs), and the no-op wrappers that decompression leaves on every module are then removed
(``remove_noop_wrappers``; recorded per model, switchable in the settings).

The package is cut by responsibility, as optimum-benchmark's is (each module says what it holds):
`settings` (what is measured, how often), `timing` (timer, interleaving, statistics, bandwidth),
`weights` (footprint, weight bytes per token, kernels), `backend` (loading an arm, warm-up,
no-op wrappers), `modes` (eager and static runners), `fusion` (fused projections for the static
step), `scenarios` (prefill, decode, throughput, interleaved; each model's static build),
`search` (the largest batch that fits), `isolation` (that search in a child process), `assemble` (raw results into the record's modes), `job` (`run_benchmark`) and `record`
(the schema, and the one reader and writer of benchmark records). The device record
(`quantstudy.device`), the memory footprint and the out-of-memory predicate (`quantstudy.memory`)
are shared with every stage.

The names below are imported on first use, so that reading records (`record`) does not import
torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "run_benchmark": "job",
    "load_model": "backend",
    "remove_noop_wrappers": "backend",
    "DEFAULT_SETTINGS": "settings",
    "SMALL_SETTINGS": "settings",
    "MODES": "settings",
    "resolve_settings": "settings",
    "Timer": "timing",
    "interleave": "timing",
    "measure_bandwidth": "timing",
    "paired_ratios": "timing",
    "ratio_to_baseline": "timing",
    "stats": "timing",
    "footprint": "weights",
    "linear_layers": "weights",
    "weight_bytes": "weights",
    "weight_bytes_excluded": "weights",
    "EagerRunner": "modes",
    "ModeSpec": "modes",
    "StaticRunner": "modes",
    "make_runner": "modes",
    "mode_spec": "modes",
    "prompt_ids": "scenarios",
    "throughput": "scenarios",
    "time_decode": "scenarios",
    "time_prefill": "scenarios",
    "largest_batch": "search",
    "BENCH_SCHEMA": "record",
    "SCHEMA_ID": "record",
}
"""Public names of the package and the module each lives in."""

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{home}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
