"""Speed and memory of one arm, measured beside the baseline in the same job (benchmark stage).

One job loads the arm and the baseline, and measures them alternately (A B A B … per scenario
repeat, A = arm, B = baseline) so that clock, thermal and neighbour drift hits both alike; the
arm's speed is reported in absolute units and as a ratio to the baseline of the same job.

Scenarios, each in two execution modes:
- ``eager``: ``model.generate`` with the dynamic cache, greedy; prefill is one forward.
- ``static``: an own decode loop over transformers' ``StaticCache``; on CUDA each forward is
  ``torch.compile(mode="reduce-overhead", fullgraph=True)``d (CUDA graphs), on the CPU it runs
  uncompiled unless the settings say otherwise. The JSON says which (``compiled``).

Measured: prefill latency (batch 1, several prompt lengths), decode latency (ms per generated
token, prefill excluded), generation throughput at several batch sizes, the largest batch that
fits (doubling, then bisection; an out-of-memory error is a measurement), memory (footprint,
peak allocated/reserved per scenario on CUDA), load time, bytes on disk, and a decode roofline:
weight bytes read per token / memory bandwidth measured in the same job by a device-to-device
copy. A mode an arm cannot run is recorded as ``{"supported": false, "reason": ...}``.

Compressed-tensors arms (GPTQ/AWQ) decompress to dense weights on their first forward (done in
a warm-up right after loading, so memory and speed are those of what actually runs); the
no-op wrappers that decompression leaves on every module are then removed
(``remove_noop_wrappers``; recorded per model, switchable in the settings).
"""

from __future__ import annotations

import copy
import functools
import gc
import json
import logging
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from .loading import bnb_cpu_record, check_arm, cpu_capability, has_avx512bf16, load_arm
from .provenance import code_version

log = logging.getLogger(__name__)

T = TypeVar("T")

SCHEMA_ID = "quant-study/bench/1"
MODES = ("eager", "static")
# Letters of the `order` strings: which model each timed call measured.
LETTERS = {"arm": "A", "baseline": "B"}

DEFAULT_SETTINGS: dict[str, Any] = {
    "seed": 0,  # prompts: token ids drawn from torch.Generator().manual_seed(seed) over the vocab
    "warmup": 3,  # untimed calls per model and scenario (>= 3 where compiled: compile, record, replay)
    "repeats": 5,  # timed calls per model and scenario, interleaved A B A B …
    "interleave": "auto",  # true: both models resident; false: one after the other; auto: true unless it does not fit
    "remove_noop_wrappers": True,  # compressed-tensors wrappers that change nothing (remove_noop_wrappers)
    "prefill": {
        "modes": ["eager", "static"],
        "batch_size": 1,
        "prompt_lengths": [128, 256, 512, 1024, 2048],
        "warmup": None,  # None: the top-level value
        "repeats": None,
    },
    "decode": {
        "modes": ["eager", "static"],
        "batch_size": 1,
        "prompt_length": 128,
        "new_tokens": 128,
        "warmup": None,
        "repeats": None,
    },
    "throughput": {
        "modes": ["eager", "static"],
        "batch_sizes": [1, 4, 8, 16, 32, 64],
        "prompt_length": 128,
        "new_tokens": 128,
        "warmup": None,
        "repeats": None,
    },
    "largest_batch": {
        "modes": ["eager"],
        "start": 1,
        "limit": 4096,  # the search stops here (hit_limit: true)
        "prompt_length": 128,
        "new_tokens": 128,
        "warmup": 1,  # for the throughput measured at the batch found
        "repeats": 3,
        # run the search in a child process: some kernels (bitsandbytes int8 at large batches)
        # end the process on a CUDA error instead of raising; auto = on CUDA only
        "isolate": "auto",
    },
    "static": {
        "compile": "auto",  # auto: on CUDA only
        "compile_mode": "reduce-overhead",
        "backend": "inductor",  # another torch.compile backend ("eager": tracing only) ignores compile_mode
        "dynamic": False,  # passed to torch.compile; False compiles one graph per shape
        "compile_prefill": True,  # false: prefill forwards run eager, decode steps compiled
    },
    "bandwidth": {
        "bytes": None,  # size of each of the two buffers; None: 1 GiB on CUDA, 256 MiB on the CPU
        "warmup": 3,
        "repeats": 10,
    },
}

# Small enough for a 2-core CPU and a tiny model: the tests and CPU smoke runs use these.
SMALL_SETTINGS: dict[str, Any] = {
    "warmup": 1,
    "repeats": 2,
    "prefill": {"prompt_lengths": [8, 16]},
    "decode": {"prompt_length": 8, "new_tokens": 4},
    "throughput": {"batch_sizes": [1, 2], "prompt_length": 8, "new_tokens": 4},
    "largest_batch": {"limit": 4, "prompt_length": 8, "new_tokens": 4, "repeats": 2},
    "bandwidth": {"bytes": 16 << 20, "warmup": 1, "repeats": 3},
}


# --- settings ---------------------------------------------------------------------------------


def resolve_settings(settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """DEFAULT_SETTINGS overlaid with `settings`; an unknown key or a bad value raises ValueError."""
    out = copy.deepcopy(DEFAULT_SETTINGS)
    _overlay(out, settings or {}, "settings")
    for section in ("prefill", "decode", "throughput", "largest_batch"):
        bad = set(out[section]["modes"]) - set(MODES)
        if bad:
            raise ValueError(f"settings.{section}.modes: {sorted(bad)} not among {list(MODES)}")
    for section in ("decode", "throughput", "largest_batch"):
        if out[section]["new_tokens"] < 2:
            raise ValueError(f"settings.{section}.new_tokens must be >= 2 (decode needs a step)")
    if out["interleave"] not in ("auto", True, False):
        raise ValueError("settings.interleave: one of 'auto', true, false")
    if out["static"]["compile"] not in ("auto", True, False):
        raise ValueError("settings.static.compile: one of 'auto', true, false")
    return out


def _overlay(base: dict, new: Mapping[str, Any], path: str) -> None:
    for key, value in new.items():
        if key not in base:
            raise ValueError(f"{path}.{key}: unknown setting (known: {', '.join(base)})")
        if isinstance(base[key], dict):
            if not isinstance(value, Mapping):
                raise ValueError(f"{path}.{key}: expected a mapping, got {value!r}")
            _overlay(base[key], value, f"{path}.{key}")
        else:
            base[key] = copy.deepcopy(value)


def _scenario_counts(settings: Mapping[str, Any], section: str) -> tuple[int, int]:
    """(warmup, repeats) of a scenario section, falling back to the top-level values."""
    sec = settings[section]
    warmup = settings["warmup"] if sec.get("warmup") is None else sec["warmup"]
    repeats = settings["repeats"] if sec.get("repeats") is None else sec["repeats"]
    return int(warmup), int(repeats)


# --- small pure helpers -----------------------------------------------------------------------


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


def prompt_ids(vocab_size: int, batch: int, length: int, seed: int) -> torch.Tensor:
    """Fixed prompts: token ids from a seeded generator over the vocabulary (same for every arm;
    the first rows of a larger batch equal the rows of a smaller one)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch, length), generator=generator, dtype=torch.long)


def _per_second(count: int, ms: float) -> float:
    return count / (max(ms, 1e-6) / 1e3)


def _is_oom(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and "out of memory" in str(error).lower()
    )


def _free_memory(device: torch.device, full: bool = False) -> None:
    """Return freed blocks to the device. Tensors die by reference counting; a full garbage
    collection (slow with large heaps) only where cycles may hold them: after an error, or once
    a model is dropped."""
    gc.collect(2 if full else 1)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _max_memory(*records: dict[str, int] | None) -> dict[str, int] | None:
    records = [r for r in records if r]
    if not records:
        return None
    return {key: max(r[key] for r in records) for key in records[0]}


# --- timing -----------------------------------------------------------------------------------

Memory = dict[str, int]
TimerFn = Callable[[Callable[[], Any], Callable[[], Any] | None], tuple[float, Memory | None]]


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
    _free_memory(device)
    finite = [s for s in samples if math.isfinite(s)]
    return {
        "method": "torch copy_ between two device buffers; (read + write) bytes / time",
        "buffer_bytes": nbytes,
        "bytes_moved_per_copy": 2 * nbytes,
        "gb_per_s": stats(finite),
    }


# --- what a model holds -----------------------------------------------------------------------


def footprint(model: torch.nn.Module) -> dict[str, int]:
    """Bytes in memory: parameters, buffers, bitsandbytes quant states (4-bit absmax/code, int8
    row scales SCB), and their total."""
    from .quantize import memory_bytes

    counted = memory_bytes(model)
    scales = sum(
        p.SCB.numel() * p.SCB.element_size()
        for p in model.parameters()
        if isinstance(getattr(p, "SCB", None), torch.Tensor)
    )
    quant_state = counted["quant_state"] + scales
    return {
        "parameters_bytes": counted["parameters"],
        "buffers_bytes": counted["buffers"],
        "quant_state_bytes": quant_state,
        "total_bytes": counted["parameters"] + counted["buffers"] + quant_state,
    }


def _untied_input_embedding_bytes(model: torch.nn.Module) -> int:
    """Bytes of the input embedding table when it is not also the output head (a decode step
    reads one row of it, not the table)."""
    try:
        inp = model.get_input_embeddings().weight
        out = model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return 0
    out_weight = getattr(out, "weight", None)
    if out_weight is not None and out_weight.data_ptr() == inp.data_ptr():
        return 0
    return inp.numel() * inp.element_size()


def _unread_linear_bytes(model: torch.nn.Module) -> int:
    """Bytes of parameters other than weight and bias held by plain nn.Linear modules, which
    Linear.forward never reads (compressed-tensors keeps weight_scale etc. beside the dense weight
    it decompressed)."""
    total = 0
    for module in model.modules():
        if type(module) is not torch.nn.Linear or "forward" in vars(module):
            continue
        params = dict(module.named_parameters(recurse=False))
        if "weight" not in params:
            continue
        total += sum(
            p.numel() * p.element_size() for n, p in params.items() if n not in ("weight", "bias")
        )
    return total


def weight_bytes_excluded(model: torch.nn.Module) -> dict[str, int]:
    """Footprint bytes a decode step does not read: an untied input embedding table (one row is
    read), and parameters plain Linear layers hold but do not use."""
    return {
        "untied_input_embedding": _untied_input_embedding_bytes(model),
        "unused_linear_params": _unread_linear_bytes(model),
    }


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes one decode step reads from the weights: the footprint (packed weights plus absmax and
    scales for bitsandbytes) less what weight_bytes_excluded lists."""
    return footprint(model)["total_bytes"] - sum(weight_bytes_excluded(model).values())


def remove_noop_wrappers(model: torch.nn.Module) -> dict[str, int]:
    """Remove compressed-tensors' per-module forward wrappers where they change nothing; returns
    how many of each kind were removed.

    A decompressed compressed-tensors model (GPTQ/AWQ W4A16 under transformers) runs dense
    Linear layers, but keeps two wrappers on every module: an offloading forward that moves the
    inputs and routes every parameter access through a cache even when nothing is offloaded, and
    a `quantized_forward` that, with no activation quantization and the weights already
    decompressed, only patches `weight.data` to itself. Both are per-call Python overhead no
    deployment carries, and both stop torch.compile(fullgraph=True). Wrappers that do work
    (real offloading to another device, activation quantization) are kept.
    """
    removed = {"offload": _remove_noop_offload(model), "quantized_forward": 0}
    for module in model.modules():
        code = getattr(getattr(vars(module).get("forward"), "__func__", None), "__code__", None)
        if code is None or code.co_name != "quantized_forward":
            continue
        if "compressed_tensors" in code.co_filename and _quantized_forward_is_identity(module):
            del module.forward  # back to the class's forward
            removed["quantized_forward"] += 1
    return removed


def _quantized_forward_is_identity(module: torch.nn.Module) -> bool:
    from compressed_tensors.quantization import QuantizationStatus

    scheme = getattr(module, "quantization_scheme", None)
    status = getattr(module, "quantization_status", None)
    if not getattr(module, "quantization_enabled", True) or scheme is None or status is None:
        return True
    if scheme.input_activations is not None or scheme.output_activations is not None:
        return False
    return scheme.weights is None or status >= QuantizationStatus.COMPRESSED


def _remove_noop_offload(model: torch.nn.Module) -> int:
    """Undo compressed-tensors offloading if every module is onloaded and offloaded to the same
    device; the number of modules unwrapped."""
    try:
        from compressed_tensors.offload import remove_dispatch
        from compressed_tensors.offload.cache.base import OffloadCache
    except ImportError:
        return 0
    caches = [m._parameters for m in model.modules() if isinstance(m._parameters, OffloadCache)]
    if not caches or not all(_same_device(c.onload_device, c.offload_device) for c in caches):
        return 0
    remove_dispatch(model, onload_tensors=True)
    return len(caches)


def _same_device(a, b) -> bool:
    try:
        a, b = torch.device(a), torch.device(b)
    except (RuntimeError, TypeError):  # e.g. "disk"
        return False
    if a.type != b.type:
        return False
    if a.type != "cuda":
        return True
    current = torch.cuda.current_device()
    return (current if a.index is None else a.index) == (current if b.index is None else b.index)


def linear_layers(model: torch.nn.Module) -> dict[str, int]:
    """Count of Linear-like modules by class and stored weight dtype: which kernel a forward uses
    (e.g. `Linear4bit:weight:uint8`, or `Linear:weight_packed:int32` before compressed-tensors
    decompresses and `Linear:weight:bfloat16` after)."""
    counts: dict[str, int] = {}
    for module in model.modules():
        if not (isinstance(module, torch.nn.Linear) or "Linear" in type(module).__name__):
            continue
        params = dict(module.named_parameters(recurse=False))
        name = next((n for n in ("weight", "weight_packed") if n in params), None)
        if name is None:
            continue
        key = f"{type(module).__name__}:{name}:{str(params[name].dtype).removeprefix('torch.')}"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


# --- execution modes --------------------------------------------------------------------------


@dataclass(frozen=True)
class ModeSpec:
    """How a mode runs: eager generate, or the own StaticCache loop (compiled or not)."""

    name: str
    compiled: bool = False
    compile_mode: str | None = None
    dynamic: bool | None = False
    compile_prefill: bool = False
    backend: str = "inductor"

    @property
    def description(self) -> str:
        if self.name == "eager":
            return "model.generate, dynamic cache, greedy; prefill = one forward with use_cache"
        if not self.compiled:
            return "own greedy loop over transformers StaticCache, not compiled"
        which = "every forward" if self.compile_prefill else "decode steps (prefill eager)"
        return (
            "own greedy loop over transformers StaticCache, "
            f"{which} torch.compile(backend={self.backend!r}, mode={self.compile_mode!r}, "
            f"fullgraph=True, dynamic={self.dynamic})"
        )


def mode_spec(name: str, settings: Mapping[str, Any], device: torch.device) -> ModeSpec:
    """The ModeSpec of a mode under the settings (`static.compile: auto` = on CUDA only)."""
    if name == "eager":
        return ModeSpec("eager")
    if name != "static":
        raise ValueError(f"unknown mode {name!r}")
    compile_ = settings["static"]["compile"]
    compiled = device.type == "cuda" if compile_ == "auto" else bool(compile_)
    return ModeSpec(
        "static",
        compiled=compiled,
        compile_mode=(
            settings["static"]["compile_mode"]
            if compiled and settings["static"]["backend"] == "inductor"
            else None
        ),
        dynamic=settings["static"]["dynamic"],
        compile_prefill=compiled and bool(settings["static"]["compile_prefill"]),
        backend=settings["static"]["backend"],
    )


# A sample: one measurement call, given the timer; returns named values and the call's memory.
Sample = Callable[[TimerFn], tuple[dict[str, float], Memory | None]]


def _last_token_kwargs(model) -> dict[str, Any]:
    supports = getattr(model, "_supports_logits_to_keep", None)
    return {"logits_to_keep": 1} if supports is not None and supports() else {}


class EagerRunner:
    """Mode eager: plain forward for prefill, `model.generate` (dynamic cache, greedy) otherwise."""

    compiled = False

    def __init__(self, model):
        self.model = model
        self._kw = _last_token_kwargs(model)
        config = model.generation_config
        self._pad = config.pad_token_id if config.pad_token_id is not None else 0
        if isinstance(self._pad, list):
            self._pad = self._pad[0]

    def _generate(self, ids: torch.Tensor, new_tokens: int) -> Callable[[], None]:
        mask = torch.ones_like(ids)

        def run():
            out = self.model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                num_beams=1,
                cache_implementation="dynamic",
                pad_token_id=self._pad,
            )
            if out.shape[-1] != ids.shape[-1] + new_tokens:
                raise RuntimeError(
                    f"generate returned {out.shape[-1] - ids.shape[-1]} new tokens, not {new_tokens}"
                )

        return run

    def prefill(self, ids: torch.Tensor) -> Sample:
        def run():
            self.model(input_ids=ids, use_cache=True, **self._kw).logits[:, -1].argmax(-1)

        def sample(timer):
            ms, memory = timer(run, None)
            return {"ms": ms}, memory

        return sample

    def decode(self, ids: torch.Tensor, new_tokens: int) -> Sample:
        full, first = self._generate(ids, new_tokens), self._generate(ids, 1)

        def sample(timer):
            ms_full, mem_full = timer(full, None)
            ms_first, mem_first = timer(first, None)
            values = {
                "ms_per_token": (ms_full - ms_first) / (new_tokens - 1),
                "generate_ms": ms_full,
                "first_token_ms": ms_first,
            }
            return values, _max_memory(mem_full, mem_first)

        return sample

    def generate(self, ids: torch.Tensor, new_tokens: int) -> Sample:
        run = self._generate(ids, new_tokens)
        tokens = ids.shape[0] * new_tokens

        def sample(timer):
            ms, memory = timer(run, None)
            return {"tokens_per_s": _per_second(tokens, ms), "ms": ms}, memory

        return sample

    def release(self) -> None:
        pass


class StaticRunner:
    """Mode static: an own greedy loop over a StaticCache; each forward (prefill and decode step)
    goes through one function, compiled when the spec says so. The cache is reset before every
    run (transformers' StaticCache counts its own writes), compiled outputs are cloned and every
    call starts a new CUDA-graph step."""

    def __init__(self, model, spec: ModeSpec):
        self.model = model
        self.compiled = spec.compiled
        self._caches: dict[tuple[int, int], Any] = {}
        kw = _last_token_kwargs(model)

        def step(ids, cache):
            out = model(input_ids=ids, past_key_values=cache, use_cache=True, **kw)
            return out.logits[:, -1].argmax(-1, keepdim=True)

        self._eager_step = step
        if spec.compiled:
            _raise_recompile_limits()
            options = {"mode": spec.compile_mode} if spec.backend == "inductor" else {}
            step = torch.compile(
                step, backend=spec.backend, fullgraph=True, dynamic=spec.dynamic, **options
            )
        self._step = step
        self._compile_prefill = spec.compile_prefill

    def _call(self, ids: torch.Tensor, cache) -> torch.Tensor:
        """One forward: the prompt (prefill) or one token per row (decode step)."""
        if not self.compiled or (ids.shape[1] > 1 and not self._compile_prefill):
            return self._eager_step(ids, cache)
        torch.compiler.cudagraph_mark_step_begin()
        return self._step(ids, cache).clone()

    def _cache(self, batch: int, length: int, device: torch.device):
        """A StaticCache of `length` positions for `batch` rows, allocated by an eager forward
        (so its tensors are marked as static addresses outside any compiled region)."""
        key = (batch, length)
        if key not in self._caches:
            from transformers import StaticCache

            cache = StaticCache(config=self.model.config, max_cache_len=length)
            first = torch.zeros((batch, 1), dtype=torch.long, device=device)
            self.model(input_ids=first, past_key_values=cache, use_cache=True)
            cache.reset()
            self._caches[key] = cache
        return self._caches[key]

    def _loop(self, cache, first: torch.Tensor, steps: int) -> torch.Tensor:
        token = first
        for _ in range(steps):
            token = self._call(token, cache)
        return token

    def prefill(self, ids: torch.Tensor) -> Sample:
        cache = self._cache(ids.shape[0], ids.shape[1], ids.device)

        def sample(timer):
            ms, memory = timer(lambda: self._call(ids, cache), cache.reset)
            return {"ms": ms}, memory

        return sample

    def decode(self, ids: torch.Tensor, new_tokens: int) -> Sample:
        cache = self._cache(ids.shape[0], ids.shape[1] + new_tokens, ids.device)
        state: dict[str, torch.Tensor] = {}

        def setup():
            cache.reset()
            state["first"] = self._call(ids, cache)

        def sample(timer):
            ms, memory = timer(lambda: self._loop(cache, state["first"], new_tokens - 1), setup)
            return {"ms_per_token": ms / (new_tokens - 1), "decode_ms": ms}, memory

        return sample

    def generate(self, ids: torch.Tensor, new_tokens: int) -> Sample:
        cache = self._cache(ids.shape[0], ids.shape[1] + new_tokens, ids.device)
        tokens = ids.shape[0] * new_tokens

        def run():
            self._loop(cache, self._call(ids, cache), new_tokens - 1)

        def sample(timer):
            ms, memory = timer(run, cache.reset)
            return {"tokens_per_s": _per_second(tokens, ms), "ms": ms}, memory

        return sample

    def tokens(self, ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
        """The greedy continuation (new tokens only), for checking the loop against generate."""
        cache = self._cache(ids.shape[0], ids.shape[1] + new_tokens, ids.device)
        cache.reset()
        out = [self._call(ids, cache)]
        for _ in range(new_tokens - 1):
            out.append(self._call(out[-1], cache))
        return torch.cat(out, dim=-1)

    def release(self) -> None:
        self._caches.clear()
        if self.compiled:
            torch._dynamo.reset()


def _raise_recompile_limits(limit: int = 64) -> None:
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(config, name) and getattr(config, name) < limit:
            setattr(config, name, limit)
    for name in ("accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(config, name) and getattr(config, name) < 4 * limit:
            setattr(config, name, 4 * limit)


def make_runner(model, spec: ModeSpec) -> EagerRunner | StaticRunner:
    """The runner of a mode for one model."""
    return EagerRunner(model) if spec.name == "eager" else StaticRunner(model, spec)


# --- scenarios: interleaved measurement of one or two models ----------------------------------


def _new_result(warmup: int, repeats: int) -> dict[str, Any]:
    return {
        "values": {},
        "memory": None,
        "oom": False,
        "error": None,
        "first_call_s": None,
        "warmup": warmup,
        "repeats": repeats,
    }


def _attempt(result: dict[str, Any], fn: Callable[[], T], device: torch.device) -> T | None:
    """fn(), unless this model already failed or ran out of memory here; an out-of-memory error is
    recorded (`oom`) and memory freed, any other error recorded (`error`)."""
    if result["oom"] or result["error"]:
        return None
    oom = False
    try:
        return fn()
    except Exception as error:  # noqa: BLE001 - recorded, the caller decides
        if _is_oom(error):
            oom = True
        else:
            log.exception("measurement failed")
            result["error"] = f"{type(error).__name__}: {error}"
    if oom:  # outside the except block, so the traceback's tensors can be freed
        result["oom"] = True
        _free_memory(device, full=True)
    return None


def _contest(
    models: Mapping[str, Any],
    spec: ModeSpec,
    make: Callable[[Any], Sample],
    warmup: int,
    repeats: int,
    timer: TimerFn,
    device: torch.device,
) -> dict[str, Any]:
    """Measure one scenario on every model: warm-ups, then `repeats` timed samples interleaved in
    the mapping's order. Returns {"order": [name per timed call], "results": {name: result}}."""
    if spec.compiled:
        warmup = max(warmup, 3)  # compile + eager run, CUDA-graph recording, first replay
    runners = {name: make_runner(model, spec) for name, model in models.items()}
    results = {name: _new_result(warmup, repeats) for name in models}
    order: list[str] = []
    samples: dict[str, Sample | None] = {}
    try:
        for name, runner in runners.items():
            samples[name] = _attempt(results[name], lambda r=runner: make(r), device)

        def one(name: str) -> tuple[dict[str, float], Memory | None] | None:
            sample = samples[name]
            if sample is None:
                return None
            return _attempt(results[name], lambda: sample(timer), device)

        for i in range(warmup):
            for name in runners:
                start = time.perf_counter()
                if one(name) is not None and i == 0:
                    _synchronize(device)
                    results[name]["first_call_s"] = time.perf_counter() - start

        def timed(name: str) -> Callable[[], Any]:
            def call():
                out = one(name)
                if out is not None:
                    order.append(name)
                return out

            return call

        outcomes = interleave({name: timed(name) for name in runners}, repeats)
        for name, outs in outcomes.items():
            done = [o for o in outs if o is not None]
            values: dict[str, list[float]] = {}
            for sample_values, _ in done:
                for key, value in sample_values.items():
                    values.setdefault(key, []).append(value)
            results[name]["values"] = values
            results[name]["memory"] = _max_memory(*(memory for _, memory in done))
    finally:
        samples.clear()  # the samples hold the caches: drop them before freeing memory
        for runner in runners.values():
            runner.release()
        del runners
        _free_memory(device)
    return {"order": order, "results": results}


def time_prefill(
    models: Mapping[str, Any],
    ids: torch.Tensor,
    *,
    spec: ModeSpec | None = None,
    warmup: int = 3,
    repeats: int = 5,
    timer: TimerFn | None = None,
) -> dict[str, Any]:
    """Prefill latency (ms) of a prompt batch `ids`, models measured alternately."""
    device = ids.device
    spec = spec or ModeSpec("eager")
    return _contest(
        models, spec, lambda r: r.prefill(ids), warmup, repeats, timer or Timer(device), device
    )


def time_decode(
    models: Mapping[str, Any],
    ids: torch.Tensor,
    new_tokens: int,
    *,
    spec: ModeSpec | None = None,
    warmup: int = 3,
    repeats: int = 5,
    timer: TimerFn | None = None,
) -> dict[str, Any]:
    """Decode latency, ms per generated token with prefill excluded: eager subtracts a 1-token
    generate from a `new_tokens` one and divides by new_tokens - 1; static times the decode
    steps of its own loop alone."""
    device = ids.device
    return _contest(
        models,
        spec or ModeSpec("eager"),
        lambda r: r.decode(ids, new_tokens),
        warmup,
        repeats,
        timer or Timer(device),
        device,
    )


def throughput(
    models: Mapping[str, Any],
    ids: torch.Tensor,
    new_tokens: int,
    *,
    spec: ModeSpec | None = None,
    warmup: int = 3,
    repeats: int = 5,
    timer: TimerFn | None = None,
) -> dict[str, Any]:
    """Generation throughput: batch × new_tokens / time of the whole generation (prefill included)."""
    device = ids.device
    return _contest(
        models,
        spec or ModeSpec("eager"),
        lambda r: r.generate(ids, new_tokens),
        warmup,
        repeats,
        timer or Timer(device),
        device,
    )


def _scenario_plan(settings: Mapping[str, Any], mode: str) -> list[tuple]:
    """The scenarios of a mode, in the order they run: ("prefill", L), ("decode",), ("throughput", B)."""
    plan: list[tuple] = []
    if mode in settings["prefill"]["modes"]:
        plan += [("prefill", length) for length in settings["prefill"]["prompt_lengths"]]
    if mode in settings["decode"]["modes"]:
        plan.append(("decode",))
    if mode in settings["throughput"]["modes"]:
        plan += [("throughput", batch) for batch in settings["throughput"]["batch_sizes"]]
    return plan


def _run_scenario(key: tuple, models, spec, settings, vocab, timer, device) -> dict[str, Any]:
    seed = settings["seed"]
    if key[0] == "prefill":
        warmup, repeats = _scenario_counts(settings, "prefill")
        ids = prompt_ids(vocab, settings["prefill"]["batch_size"], key[1], seed).to(device)
        return time_prefill(models, ids, spec=spec, warmup=warmup, repeats=repeats, timer=timer)
    if key[0] == "decode":
        sec = settings["decode"]
        warmup, repeats = _scenario_counts(settings, "decode")
        ids = prompt_ids(vocab, sec["batch_size"], sec["prompt_length"], seed).to(device)
        return time_decode(
            models, ids, sec["new_tokens"], spec=spec, warmup=warmup, repeats=repeats, timer=timer
        )
    sec = settings["throughput"]
    warmup, repeats = _scenario_counts(settings, "throughput")
    ids = prompt_ids(vocab, key[1], sec["prompt_length"], seed).to(device)
    return throughput(
        models, ids, sec["new_tokens"], spec=spec, warmup=warmup, repeats=repeats, timer=timer
    )


def _run_modes(models: Mapping[str, Any], settings, vocab, timer, device) -> dict[str, Any]:
    """Every planned scenario of every mode, models interleaved. A model that fails (not out of
    memory) in a mode is dropped from that mode's remaining scenarios; its reason is kept."""
    raw: dict[str, Any] = {}
    for mode in MODES:
        plan = _scenario_plan(settings, mode)
        if not plan:
            continue
        spec = mode_spec(mode, settings, device)
        active = dict(models)
        failures: dict[str, str] = {}
        scenarios: dict[tuple, Any] = {}
        for key in plan:
            if not active:
                break
            log.info("mode %s, scenario %s: %s", mode, key, ", ".join(active))
            scenario = _run_scenario(key, active, spec, settings, vocab, timer, device)
            scenarios[key] = scenario
            for name, result in scenario["results"].items():
                if result["error"]:
                    failures[name] = f"{'/'.join(map(str, key))}: {result['error']}"
                    active.pop(name)
                    log.warning("%s cannot run mode %s: %s", name, mode, failures[name])
        raw[mode] = {"spec": spec, "failures": failures, "scenarios": scenarios, "plan": plan}
    return raw


def _merge_raw(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """Raw results of two sequential runs (one model each) as one."""
    merged = {}
    for mode, a in first.items():
        b = second[mode]
        scenarios = {}
        for key in a["plan"]:
            parts = [s for s in (a["scenarios"].get(key), b["scenarios"].get(key)) if s]
            if parts:
                scenarios[key] = {
                    "order": [n for p in parts for n in p["order"]],
                    "results": {n: r for p in parts for n, r in p["results"].items()},
                }
        merged[mode] = a | {"failures": a["failures"] | b["failures"], "scenarios": scenarios}
    return merged


# --- the job ----------------------------------------------------------------------------------


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The device to measure on: the given one, else cuda:<current> when a GPU is visible, else cpu."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def device_record(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on: device, memory, driver, CUDA, library versions, clocks."""
    from .provenance import device_info, package_versions

    versions = package_versions(("torch", "transformers", "bitsandbytes", "compressed-tensors"))
    record: dict[str, Any] = {
        "device_kind": device.type,
        "name": None,
        "total_memory_bytes": None,
        "driver": None,
        "cuda": torch.version.cuda,
        "torch": torch.__version__,
        "transformers": versions["transformers"],
        "bitsandbytes": versions["bitsandbytes"],
        "compressed_tensors": versions["compressed-tensors"],
        "python": platform.python_version(),
        "cpu_model": _cpu_model(),
        "cpu_capability": cpu_capability(),
        "bnb_avx512bf16": has_avx512bf16(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "clocks": None,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        record.update(
            name=props.name,
            total_memory_bytes=props.total_memory,
            capability=f"{props.major}.{props.minor}",
            multiprocessors=props.multi_processor_count,
            driver=device_info().get("driver"),
        )
        record["clocks"] = _nvml_clocks(props)
    else:
        record.update(name=record["cpu_model"], total_memory_bytes=_host_memory_bytes())
    return record


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or None


def _host_memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _nvml_clocks(props) -> dict[str, Any] | None:
    """Current and maximum SM/memory clocks and the power limit, by NVML; None if unreadable."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - NVML is optional
        return None
    try:
        handle = None
        uuid = getattr(props, "uuid", None)
        if uuid is not None:
            text = str(uuid)
            try:
                handle = pynvml.nvmlDeviceGetHandleByUUID(
                    text if text.startswith("GPU-") else f"GPU-{text}"
                )
            except Exception:  # noqa: BLE001
                handle = None
        if (
            handle is None
            and torch.cuda.device_count() == 1
            and "CUDA_VISIBLE_DEVICES" not in os.environ
        ):
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        if handle is None:
            return None
        out: dict[str, Any] = {}
        readings = {
            "sm_mhz": lambda: pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM),
            "memory_mhz": lambda: pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_MEM),
            "max_sm_mhz": lambda: pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_SM),
            "max_memory_mhz": lambda: pynvml.nvmlDeviceGetMaxClockInfo(
                handle, pynvml.NVML_CLOCK_MEM
            ),
            "power_limit_w": lambda: pynvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000,
            "temperature_c": lambda: pynvml.nvmlDeviceGetTemperature(
                handle, pynvml.NVML_TEMPERATURE_GPU
            ),
        }
        for key, read in readings.items():
            try:
                out[key] = read()
            except Exception:  # noqa: BLE001
                out[key] = None
        return out
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass


def _read_quantize_json(directory: Path) -> dict[str, Any] | None:
    import json

    path = directory / "quantize.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def load_model(directory: Path | str, device: torch.device):
    """Load a saved arm onto the device; returns (model, seconds, CUDA bytes allocated by it).

    Its weight files are checked against its quantize.json first (`check_arm`, outside the
    timed load: hashing is not loading)."""
    check_arm(directory)
    _synchronize(device)
    before = torch.cuda.memory_allocated(device) if device.type == "cuda" else None
    start = time.perf_counter()
    model = load_arm(directory, device, check=False)
    _synchronize(device)
    seconds = time.perf_counter() - start
    allocated = torch.cuda.memory_allocated(device) - before if device.type == "cuda" else None
    return model, seconds, allocated


def _warm_up_model(model, ids: torch.Tensor, device: torch.device) -> int | None:
    """One eager forward (compressed-tensors arms decompress here); CUDA bytes it left allocated."""
    _free_memory(device)
    before = torch.cuda.memory_allocated(device) if device.type == "cuda" else None
    model(input_ids=ids, use_cache=False)
    _free_memory(device)
    return torch.cuda.memory_allocated(device) - before if device.type == "cuda" else None


def _model_record(
    name: str, directory: Path, model, seconds: float, allocated, warm_ids, device, remove_wrappers
):
    from .provenance import dir_weight_files, disk_bytes

    quantize = _read_quantize_json(directory)
    after_load = footprint(model)
    layers_after_load = linear_layers(model)
    grown = _warm_up_model(model, warm_ids, device)
    removed = remove_noop_wrappers(model) if remove_wrappers else {}
    return {
        "name": name,
        "dir": str(directory),
        "method": quantize.get("method") if isinstance(quantize, dict) else None,
        "quantize": quantize,
        "dtype": str(model.dtype).removeprefix("torch."),
        "load_s": seconds,
        "disk_bytes": sum(p.stat().st_size for p in directory.rglob("*") if p.is_file()),
        "weights_disk_bytes": disk_bytes(dir_weight_files(directory)),
        "footprint_after_load": after_load,
        "footprint": footprint(model),
        "weight_bytes_per_token": weight_bytes(model),
        "weight_bytes_excluded": weight_bytes_excluded(model),
        "layers_after_load": layers_after_load,
        "layers": linear_layers(model),
        "removed_wrappers": removed,
        "cuda_allocated_after_load_bytes": allocated,
        "cuda_allocated_after_warmup_bytes": None if allocated is None else allocated + grown,
        "bnb_cpu_path": bnb_cpu_record(model)["bnb_cpu_path"],
    }


def _vocab_size(model) -> int:
    return int(model.config.get_text_config().vocab_size)


def _largest_batch_for(
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
        result = _new_result(0, 1)
        runner = make_runner(model, spec)
        start = time.perf_counter()
        try:
            sample = _attempt(
                result,
                lambda: runner.generate(
                    prompt_ids(vocab, batch, length, seed).to(device), new_tokens
                ),
                device,
            )
            if sample is not None:
                _attempt(result, lambda: sample(timer), device)
            sample = None
        finally:
            runner.release()
            _free_memory(device)
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
        out["throughput"] = _model_entry(result)
    return out


def _largest_batch_child(arm_dir: str, mode: str, settings, device: str, progress: str, out: str):
    """Child process of `_largest_batch_isolated`: load the arm, search, write the result."""
    device_ = torch.device(device)
    model, _, _ = load_model(arm_dir, device_)
    Path(progress + ".loaded").touch()
    spec = mode_spec(mode, settings, device_)

    def record(probe: dict[str, Any]) -> None:
        with open(progress, "a") as f:
            f.write(json.dumps(probe) + "\n")

    result = _largest_batch_for(
        "arm", model, spec, settings, _vocab_size(model), Timer(device_), device_, record
    )
    Path(out).write_text(json.dumps(result, default=str))


def _next_probe(probes: Sequence[Mapping[str, Any]], start: int, limit: int) -> int | None:
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


def _settings_at_batch(settings: Mapping[str, Any], batch: int) -> dict[str, Any]:
    """A copy of the settings whose largest-batch search tries exactly `batch`."""
    out = copy.deepcopy(dict(settings))
    out["largest_batch"] = {**out["largest_batch"], "start": batch, "limit": batch}
    return out


def _last_words(stderr: str) -> str:
    """The last line a process wrote to stderr (at most 300 characters)."""
    return (stderr.strip().splitlines() or [""])[-1][:300]


def _search_child(arm_dir, mode: str, settings, device: torch.device):
    """Run `_largest_batch_child` in a fresh process: (exit code, result or None, probes, stderr,
    whether the arm had loaded)."""
    import subprocess
    import sys
    import tempfile

    package_root = str(Path(__file__).resolve().parent.parent)
    with tempfile.TemporaryDirectory() as tmp:
        progress, out = Path(tmp) / "probes.jsonl", Path(tmp) / "result.json"
        args = {
            "arm_dir": str(arm_dir),
            "mode": mode,
            "settings": settings,
            "device": str(device),
            "progress": str(progress),
            "out": str(out),
        }
        (Path(tmp) / "args.json").write_text(json.dumps(args, default=str))
        code = (
            "import json, sys; from quantstudy.benchmark import _largest_batch_child as run; "
            "run(**json.load(open(sys.argv[1])))"
        )
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [package_root, *filter(None, [os.environ.get("PYTHONPATH")])]
        )}  # fmt: skip
        child = subprocess.run(
            [sys.executable, "-c", code, str(Path(tmp) / "args.json")],
            env=env,
            capture_output=True,
            text=True,
        )
        result = json.loads(out.read_text()) if child.returncode == 0 and out.exists() else None
        probes = (
            [json.loads(x) for x in progress.read_text().splitlines()] if progress.exists() else []
        )
        loaded = Path(f"{progress}.loaded").exists()
    return child.returncode, result, probes, child.stderr, loaded


def _largest_batch_isolated(arm_dir, mode: str, settings, device: torch.device) -> dict[str, Any]:
    """The largest-batch search in a child process, so a kernel that ends the process (instead of
    raising) is recorded as the batch where it happened rather than losing the whole job.

    When the process dies after some batches ran (on the H100 bitsandbytes' int8 kernel ends it
    at batch 2048 with memory to spare), the largest batch that ran is the answer, as for an
    out-of-memory: a second child measures its throughput, and the result says what stopped the
    search (`stopped_by`). Only a search where no batch ran, or whose largest batch then fails
    too, is unsupported.

    The child is a fresh `python -c` that imports this module, not a multiprocessing spawn: spawn
    re-runs the parent's __main__, which under Snakemake is the job script itself.
    """
    code, result, probes, stderr, loaded = _search_child(arm_dir, mode, settings, device)
    if result is not None:
        return result
    log.warning("largest-batch search process failed:\n%s", stderr[-3000:])
    fitted = [p["batch_size"] for p in probes if p["fits"]]
    tried = sorted(p["batch_size"] for p in probes)
    sec = settings["largest_batch"]
    where = (
        f"at batch {_next_probe(probes, sec['start'], sec['limit'])}"
        if loaded
        else "loading the arm"
    )
    died = (
        f"the search process ended with exit code {code} {where} after probing batches {tried}; "
        f"largest that fitted: {max(fitted) if fitted else None}; last words: "
        f"{_last_words(stderr)!r}"
    )
    if fitted:
        found = max(fitted)
        code2, again, _, stderr2, _ = _search_child(
            arm_dir, mode, _settings_at_batch(settings, found), device
        )
        if again is not None and again.get("supported") and again.get("batch_size") == found:
            again.update(
                limit=sec["limit"],
                hit_limit=False,
                probes=probes,
                stopped_by={"exit_code": code, "reason": died},
            )
            return again
        why = (again or {}).get("reason") or _last_words(stderr2)
        died += f"; batch {found} alone then failed too (exit code {code2}): {why}"
    return {
        "supported": False,
        "reason": died,
        "batch_size": max(fitted) if fitted else 0,
        "limit": sec["limit"],
        "probes": probes,
    }


def _baseline_at_largest(
    result: dict[str, Any],
    baseline_dir: Path,
    mode: str,
    settings: Mapping[str, Any],
    device: torch.device,
    isolate: bool,
    vocab: int,
    timer,
) -> None:
    """Add to an arm's largest-batch `result` the baseline's throughput at the same batch size,
    measured in the same job right after the arm's search, and `throughput_ratio` (arm / baseline).

    The search runs the arm alone, since how much fits beside nothing else is the question, so
    this one scenario cannot interleave the two models; measuring the baseline next, at the same
    batch, still lets its throughput be read as a ratio against the same machine's state
    (absolute throughput at large batches differed 2.5x between two H100 machines).
    """
    batch = result.get("batch_size") or 0
    arm_tps = ((result.get("throughput") or {}).get("tokens_per_s") or {}).get("median")
    if not result.get("supported") or batch < 1 or arm_tps is None:
        return
    at_batch = _settings_at_batch(settings, batch)
    if isolate:
        base = _largest_batch_isolated(baseline_dir, mode, at_batch, device)
    else:
        model, _, _ = load_model(baseline_dir, device)
        spec = mode_spec(mode, at_batch, device)
        base = _largest_batch_for("baseline", model, spec, at_batch, vocab, timer, device)
        del model
        _free_memory(device, full=True)
    base_tps = ((base.get("throughput") or {}).get("tokens_per_s") or {}).get("median")
    fitted = bool(base.get("supported")) and base.get("batch_size") == batch
    result["baseline"] = {
        "batch_size": batch,
        "fits": fitted,
        "throughput": base.get("throughput") if fitted else None,
        "reason": None if fitted else base.get("reason") or "the baseline did not fit this batch",
    }
    result["throughput_ratio"] = arm_tps / base_tps if fitted and base_tps else None


def _model_entry(result: dict[str, Any]) -> dict[str, Any]:
    entry = {key: stats(values) for key, values in result["values"].items()}
    entry.update(
        memory=result["memory"],
        oom=result["oom"],
        first_call_s=result["first_call_s"],
        warmup=result["warmup"],
        repeats=result["repeats"],
    )
    return entry


PRIMARY = {
    "prefill": ("ms", "time_ratio"),
    "decode": ("ms_per_token", "time_ratio"),
    "throughput": ("tokens_per_s", "throughput_ratio"),
}


def _assemble_mode(
    raw_mode: dict[str, Any], settings, models_out, bandwidth_gbps, strategy
) -> dict[str, Any]:
    spec: ModeSpec = raw_mode["spec"]
    failures = raw_mode["failures"]
    if "arm" in failures:
        return {"supported": False, "reason": failures["arm"]}
    single = strategy == "single"
    out: dict[str, Any] = {
        "supported": True,
        "reason": None,
        "compiled": spec.compiled,
        "compile_mode": spec.compile_mode,
        "prefill_compiled": spec.compile_prefill,
        "description": spec.description,
        "baseline_supported": single or "baseline" not in failures,
        "baseline_reason": failures.get("baseline"),
        "prefill": [],
        "decode": None,
        "throughput": [],
    }
    for key, scenario in raw_mode["scenarios"].items():
        kind = key[0]
        results = scenario["results"]
        if "arm" not in results:
            continue
        metric, ratio_name = PRIMARY[kind]
        entry: dict[str, Any] = {}
        if kind == "prefill":
            entry.update(batch_size=settings["prefill"]["batch_size"], prompt_length=key[1])
        elif kind == "decode":
            sec = settings["decode"]
            entry.update(
                batch_size=sec["batch_size"],
                prompt_length=sec["prompt_length"],
                new_tokens=sec["new_tokens"],
            )
        else:
            sec = settings["throughput"]
            entry.update(
                batch_size=key[1], prompt_length=sec["prompt_length"], new_tokens=sec["new_tokens"]
            )
        entry["order"] = "".join(LETTERS[n] for n in scenario["order"])
        for name in ("arm", "baseline"):
            result = results.get(name)
            entry[name] = None if result is None or result["error"] else _model_entry(result)
            if kind == "decode" and entry[name] is not None:
                entry[name].update(
                    _roofline(entry[name], models_out[name], bandwidth_gbps, entry["batch_size"])
                )
        arm_values = results["arm"]["values"].get(metric, [])
        if single:
            entry[ratio_name] = 1.0 if arm_values else None
            entry["paired_" + ratio_name] = None
        else:
            base_values = (
                results["baseline"]["values"].get(metric, []) if "baseline" in results else []
            )
            entry[ratio_name] = ratio_to_baseline(arm_values, base_values)
            entry["paired_" + ratio_name] = (
                paired_ratios(arm_values, base_values) if strategy == "interleaved" else None
            )
        if kind == "decode":
            out["decode"] = entry
        else:
            out[kind].append(entry)
    return out


def _roofline(
    entry: dict[str, Any], model_out: dict[str, Any], bandwidth_gbps: float | None, batch: int
):
    """Decode roofline: weight bytes read per step / bandwidth, and the achieved fraction of it."""
    if not bandwidth_gbps or model_out is None:
        return {"roofline_ms": None, "roofline_fraction": None}
    roofline_ms = model_out["weight_bytes_per_token"] / (bandwidth_gbps * 1e9) * 1e3
    measured = entry.get("ms_per_token")
    fraction = roofline_ms / measured["median"] if measured and measured["median"] > 0 else None
    return {"roofline_ms": roofline_ms, "roofline_fraction": fraction, "roofline_batch_size": batch}


def run_benchmark(
    arm_dir: str | Path,
    baseline_dir: str | Path,
    settings: Mapping[str, Any] | None = None,
    device: str | torch.device | None = None,
    *,
    arm_name: str | None = None,
    baseline_name: str | None = None,
    timer: TimerFn | None = None,
) -> dict[str, Any]:
    """Benchmark one arm beside the baseline; returns the record that BENCH_SCHEMA describes.

    `timer` replaces the device timer (tests inject a fake clock); names default to quantize.json's
    `arm`, else the directory's name."""
    wall_start = time.perf_counter()
    settings = resolve_settings(settings)
    device = resolve_device(device)
    timer = timer or Timer(device)
    arm_dir, baseline_dir = Path(arm_dir), Path(baseline_dir)
    is_baseline = arm_dir.resolve() == baseline_dir.resolve()
    arm_name = arm_name or _name_of(arm_dir)
    baseline_name = arm_name if is_baseline else (baseline_name or _name_of(baseline_dir))
    torch.manual_seed(settings["seed"])

    record = device_record(device)
    bw = settings["bandwidth"]
    with torch.inference_mode():
        bandwidth = measure_bandwidth(device, bw["bytes"], bw["warmup"], bw["repeats"], timer=timer)
    bandwidth_gbps = bandwidth["gb_per_s"]["median"] if bandwidth["gb_per_s"] else None

    models_out: dict[str, Any] = {"arm": None, "baseline": None}
    loaded: dict[str, Any] = {}
    strategy, strategy_reason = "single" if is_baseline else "interleaved", None
    if not is_baseline and settings["interleave"] is False:
        strategy, strategy_reason = "sequential", "settings.interleave is false"

    def load(name: str, directory: Path) -> None:
        model, seconds, allocated = load_model(directory, device)
        vocab = _vocab_size(model)
        warm = prompt_ids(vocab, 1, settings["decode"]["prompt_length"], settings["seed"]).to(
            device
        )
        with torch.inference_mode():
            models_out[name] = _model_record(
                arm_name if name == "arm" else baseline_name,
                directory,
                model,
                seconds,
                allocated,
                warm,
                device,
                settings["remove_noop_wrappers"],
            )
        loaded[name] = model

    def unload(name: str) -> None:
        loaded.pop(name, None)
        _free_memory(device, full=True)

    if strategy == "interleaved":
        try:
            load("baseline", baseline_dir)
            load("arm", arm_dir)
        except Exception as error:  # noqa: BLE001 - only running out of memory falls back
            if not _is_oom(error) or settings["interleave"] is True:
                raise
            strategy_reason = (
                f"arm and baseline do not fit together: {type(error).__name__}: {error}"
            )
        if strategy_reason:
            strategy = "sequential"
            unload("arm")
            unload("baseline")
            log.warning("%s; measuring one after the other", strategy_reason)

    with torch.inference_mode():
        if strategy == "interleaved":
            _check_vocab(loaded)
            vocab = _vocab_size(loaded["arm"])
            raw = _run_modes(
                {"arm": loaded["arm"], "baseline": loaded["baseline"]},
                settings,
                vocab,
                timer,
                device,
            )
            unload("baseline")
        elif strategy == "sequential":
            load("baseline", baseline_dir)
            vocab = _vocab_size(loaded["baseline"])
            raw_base = _run_modes({"baseline": loaded["baseline"]}, settings, vocab, timer, device)
            unload("baseline")
            load("arm", arm_dir)
            if _vocab_size(loaded["arm"]) != vocab:
                raise ValueError("arm and baseline have different vocabularies")
            raw = _merge_raw(
                raw_base, _run_modes({"arm": loaded["arm"]}, settings, vocab, timer, device)
            )
        else:
            load("arm", arm_dir)
            vocab = _vocab_size(loaded["arm"])
            raw = _run_modes({"arm": loaded["arm"]}, settings, vocab, timer, device)

        modes = {
            mode: _assemble_mode(raw_mode, settings, models_out, bandwidth_gbps, strategy)
            for mode, raw_mode in raw.items()
        }
        largest = {}
        isolate = settings["largest_batch"].get("isolate", "auto")
        isolate = device.type == "cuda" if isolate == "auto" else bool(isolate)
        if isolate:
            unload("arm")  # the child process loads its own copy
        for mode in settings["largest_batch"]["modes"]:
            if isolate:
                largest[mode] = _largest_batch_isolated(arm_dir, mode, settings, device)
            else:
                spec = mode_spec(mode, settings, device)
                largest[mode] = _largest_batch_for(
                    "arm", loaded["arm"], spec, settings, vocab, timer, device
                )
        unload("arm")
        if not is_baseline:
            for mode, result in largest.items():
                _baseline_at_largest(
                    result, baseline_dir, mode, settings, device, isolate, vocab, timer
                )

    return {
        "schema": SCHEMA_ID,
        "arm": arm_name,
        "baseline": baseline_name,
        "is_baseline": is_baseline,
        "device_kind": device.type,
        "device": record,
        "settings": settings,
        "interleaving": {
            "strategy": strategy,
            "reason": strategy_reason,
            "letters": {"A": "arm", "B": "baseline"},
        },
        "bandwidth": bandwidth,
        "models": models_out,
        "modes": modes,
        "largest_batch": largest,
        "wall_s": time.perf_counter() - wall_start,
        "code_version": code_version(),
    }


def _name_of(directory: Path) -> str:
    quantize = _read_quantize_json(directory)
    if isinstance(quantize, dict) and isinstance(quantize.get("arm"), str):
        return quantize["arm"]
    return directory.name


def _check_vocab(models: Mapping[str, Any]) -> None:
    sizes = {name: _vocab_size(model) for name, model in models.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"arm and baseline have different vocabularies: {sizes}")


# --- the output's schema ----------------------------------------------------------------------

_NUM = {"type": "number"}
_INT = {"type": "integer", "minimum": 0}
_OPT_NUM = {"type": ["number", "null"]}
_OPT_INT = {"type": ["integer", "null"], "minimum": 0}
_OPT_STR = {"type": ["string", "null"]}

BENCH_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": SCHEMA_ID,
    "title": "quant-study benchmark of one arm beside the baseline",
    "description": (
        "Written by quantstudy.benchmark.run_benchmark to results/{study}/bench/{arm}.json. Times "
        "in ms unless a key says otherwise; ratios are arm / baseline medians from the same job."
    ),
    "type": "object",
    "additionalProperties": False,
    "required": [
        "schema",
        "arm",
        "baseline",
        "is_baseline",
        "device_kind",
        "device",
        "settings",
        "interleaving",
        "bandwidth",
        "models",
        "modes",
        "largest_batch",
        "wall_s",
        "code_version",
    ],
    "properties": {
        "schema": {"const": SCHEMA_ID},
        "arm": {"type": "string"},
        "baseline": {"type": "string"},
        "is_baseline": {
            "type": "boolean",
            "description": "the arm is the baseline: measured once, ratios 1",
        },
        "device_kind": {"enum": ["cuda", "cpu"]},
        "device": {"$ref": "#/$defs/device"},
        "settings": {
            "type": "object",
            "description": "DEFAULT_SETTINGS overlaid with the job's settings",
        },
        "interleaving": {
            "type": "object",
            "additionalProperties": False,
            "required": ["strategy", "reason", "letters"],
            "properties": {
                "strategy": {
                    "enum": ["interleaved", "sequential", "single"],
                    "description": (
                        "interleaved: both resident, calls alternate A B A B; sequential: baseline "
                        "measured, freed, then the arm (ratios across time, no pairing); single: the "
                        "arm is the baseline"
                    ),
                },
                "reason": _OPT_STR,
                "letters": {"type": "object", "description": "letters of the `order` strings"},
            },
        },
        "bandwidth": {
            "type": "object",
            "additionalProperties": False,
            "required": ["method", "buffer_bytes", "bytes_moved_per_copy", "gb_per_s"],
            "properties": {
                "method": {"type": "string"},
                "buffer_bytes": _INT,
                "bytes_moved_per_copy": _INT,
                "gb_per_s": {
                    "$ref": "#/$defs/stats_or_null",
                    "description": "1e9 bytes per second",
                },
            },
        },
        "models": {
            "type": "object",
            "additionalProperties": False,
            "required": ["arm", "baseline"],
            "properties": {
                "arm": {"$ref": "#/$defs/model"},
                "baseline": {
                    "oneOf": [{"$ref": "#/$defs/model"}, {"type": "null"}],
                    "description": "null when the arm is the baseline",
                },
            },
        },
        "modes": {
            "type": "object",
            "additionalProperties": False,
            "properties": {mode: {"$ref": "#/$defs/mode"} for mode in MODES},
        },
        "largest_batch": {
            "type": "object",
            "additionalProperties": False,
            "description": "the arm alone resident (baseline freed); the baseline's own job has its",
            "properties": {mode: {"$ref": "#/$defs/largest_batch"} for mode in MODES},
        },
        "wall_s": _NUM,
        "code_version": {
            "type": "object",
            "additionalProperties": False,
            "required": ["version", "code_sha256", "commit", "dirty"],
            "description": "the quant-study code that made this record (provenance.code_version)",
            "properties": {
                "version": _OPT_STR,
                "code_sha256": {"type": "string"},
                "commit": _OPT_STR,
                "dirty": {"type": ["boolean", "null"]},
            },
        },
    },
    "$defs": {
        "stats": {
            "type": "object",
            "additionalProperties": False,
            "required": ["median", "min", "max", "n", "samples"],
            "properties": {
                "median": _NUM,
                "min": _NUM,
                "max": _NUM,
                "n": {"type": "integer", "minimum": 1},
                "samples": {"type": "array", "items": _NUM, "minItems": 1},
            },
        },
        "stats_or_null": {"oneOf": [{"$ref": "#/$defs/stats"}, {"type": "null"}]},
        "memory": {
            "description": "CUDA only (null on the CPU): max over the model's timed calls",
            "oneOf": [
                {"type": "null"},
                {
                    "type": "object",
                    "additionalProperties": False,
                    "required": [
                        "allocated_before_bytes",
                        "peak_allocated_bytes",
                        "peak_reserved_bytes",
                    ],
                    "properties": {
                        "allocated_before_bytes": _INT,
                        "peak_allocated_bytes": _INT,
                        "peak_reserved_bytes": _INT,
                    },
                },
            ],
        },
        "footprint": {
            "type": "object",
            "additionalProperties": False,
            "required": ["parameters_bytes", "buffers_bytes", "quant_state_bytes", "total_bytes"],
            "properties": {
                "parameters_bytes": _INT,
                "buffers_bytes": _INT,
                "quant_state_bytes": _INT,
                "total_bytes": _INT,
            },
        },
        "device": {
            "type": "object",
            "required": [
                "device_kind",
                "name",
                "total_memory_bytes",
                "driver",
                "cuda",
                "torch",
                "transformers",
                "bitsandbytes",
                "compressed_tensors",
                "cpu_model",
                "cpu_capability",
                "bnb_avx512bf16",
                "clocks",
            ],
            "properties": {
                "device_kind": {"enum": ["cuda", "cpu"]},
                "name": _OPT_STR,
                "total_memory_bytes": _OPT_INT,
                "driver": _OPT_STR,
                "cuda": _OPT_STR,
                "torch": {"type": "string"},
                "transformers": _OPT_STR,
                "bitsandbytes": _OPT_STR,
                "compressed_tensors": _OPT_STR,
                "cpu_model": _OPT_STR,
                "cpu_capability": {"type": "string", "description": "torch's CPU kernel level"},
                "bnb_avx512bf16": {
                    "type": "boolean",
                    "description": "bitsandbytes finds AVX512-BF16 (its packed 4-bit CPU path)",
                },
                "clocks": {"type": ["object", "null"]},
            },
        },
        "model": {
            "type": "object",
            "additionalProperties": False,
            "required": [
                "name",
                "dir",
                "method",
                "quantize",
                "dtype",
                "load_s",
                "disk_bytes",
                "weights_disk_bytes",
                "footprint_after_load",
                "footprint",
                "weight_bytes_per_token",
                "weight_bytes_excluded",
                "layers_after_load",
                "layers",
                "removed_wrappers",
                "cuda_allocated_after_load_bytes",
                "cuda_allocated_after_warmup_bytes",
                "bnb_cpu_path",
            ],
            "properties": {
                "name": {"type": "string"},
                "dir": {"type": "string"},
                "method": _OPT_STR,
                "quantize": {"type": ["object", "null"], "description": "the arm's quantize.json"},
                "dtype": {"type": "string"},
                "load_s": _NUM,
                "disk_bytes": _INT,
                "weights_disk_bytes": _INT,
                "footprint_after_load": {"$ref": "#/$defs/footprint"},
                "footprint": {
                    "$ref": "#/$defs/footprint",
                    "description": "after one warm-up forward (compressed-tensors has decompressed)",
                },
                "weight_bytes_per_token": _INT,
                "weight_bytes_excluded": {
                    "type": "object",
                    "additionalProperties": _INT,
                    "description": "footprint bytes a decode step does not read, by reason",
                },
                "layers_after_load": {"type": "object", "additionalProperties": _INT},
                "layers": {"type": "object", "additionalProperties": _INT},
                "removed_wrappers": {
                    "type": "object",
                    "additionalProperties": _INT,
                    "description": "compressed-tensors forward wrappers removed after the "
                    "warm-up because they changed nothing (see remove_noop_wrappers), by kind",
                },
                "cuda_allocated_after_load_bytes": _OPT_INT,
                "cuda_allocated_after_warmup_bytes": _OPT_INT,
                "bnb_cpu_path": {
                    "enum": ["reference", "packed", None],
                    "description": "which bitsandbytes 4-bit CPU path ran (quantstudy.loading); "
                    "null without 4-bit layers on the CPU",
                },
            },
        },
        "model_result": {
            "type": "object",
            "required": ["memory", "oom", "first_call_s", "warmup", "repeats"],
            "properties": {
                "memory": {"$ref": "#/$defs/memory"},
                "oom": {"type": "boolean", "description": "ran out of memory: a measurement"},
                "first_call_s": _OPT_NUM,
                "warmup": _INT,
                "repeats": _INT,
                "ms": {"$ref": "#/$defs/stats_or_null"},
                "ms_per_token": {"$ref": "#/$defs/stats_or_null"},
                "generate_ms": {"$ref": "#/$defs/stats_or_null"},
                "first_token_ms": {"$ref": "#/$defs/stats_or_null"},
                "decode_ms": {"$ref": "#/$defs/stats_or_null"},
                "tokens_per_s": {"$ref": "#/$defs/stats_or_null"},
                "roofline_ms": _OPT_NUM,
                "roofline_fraction": _OPT_NUM,
                "roofline_batch_size": _INT,
            },
            "additionalProperties": False,
        },
        "model_result_or_null": {"oneOf": [{"$ref": "#/$defs/model_result"}, {"type": "null"}]},
        "scenario": {
            "type": "object",
            "required": ["batch_size", "prompt_length", "order", "arm", "baseline"],
            "properties": {
                "batch_size": {"type": "integer", "minimum": 1},
                "prompt_length": {"type": "integer", "minimum": 1},
                "new_tokens": {"type": "integer", "minimum": 2},
                "order": {
                    "type": "string",
                    "pattern": "^[AB]*$",
                    "description": "timed calls in order",
                },
                "arm": {"$ref": "#/$defs/model_result"},
                "baseline": {"$ref": "#/$defs/model_result_or_null"},
                "time_ratio": _OPT_NUM,
                "paired_time_ratio": {"$ref": "#/$defs/stats_or_null"},
                "throughput_ratio": _OPT_NUM,
                "paired_throughput_ratio": {"$ref": "#/$defs/stats_or_null"},
            },
            "additionalProperties": False,
        },
        "unsupported": {
            "type": "object",
            "additionalProperties": False,
            "required": ["supported", "reason"],
            "properties": {"supported": {"const": False}, "reason": {"type": "string"}},
        },
        "mode": {
            "oneOf": [
                {"$ref": "#/$defs/unsupported"},
                {
                    "type": "object",
                    "additionalProperties": False,
                    "required": [
                        "supported",
                        "reason",
                        "compiled",
                        "compile_mode",
                        "prefill_compiled",
                        "description",
                        "baseline_supported",
                        "baseline_reason",
                        "prefill",
                        "decode",
                        "throughput",
                    ],
                    "properties": {
                        "supported": {"const": True},
                        "reason": {"type": "null"},
                        "compiled": {"type": "boolean"},
                        "compile_mode": _OPT_STR,
                        "prefill_compiled": {"type": "boolean"},
                        "description": {"type": "string"},
                        "baseline_supported": {"type": "boolean"},
                        "baseline_reason": _OPT_STR,
                        "prefill": {
                            "type": "array",
                            "items": {
                                "allOf": [
                                    {"$ref": "#/$defs/scenario"},
                                    {"required": ["time_ratio", "paired_time_ratio"]},
                                ]
                            },
                        },
                        "decode": {
                            "oneOf": [
                                {"type": "null"},
                                {
                                    "allOf": [
                                        {"$ref": "#/$defs/scenario"},
                                        {
                                            "required": [
                                                "new_tokens",
                                                "time_ratio",
                                                "paired_time_ratio",
                                            ]
                                        },
                                    ]
                                },
                            ]
                        },
                        "throughput": {
                            "type": "array",
                            "items": {
                                "allOf": [
                                    {"$ref": "#/$defs/scenario"},
                                    {
                                        "required": [
                                            "new_tokens",
                                            "throughput_ratio",
                                            "paired_throughput_ratio",
                                        ]
                                    },
                                ]
                            },
                        },
                    },
                },
            ]
        },
        "largest_batch": {
            "oneOf": [
                {"$ref": "#/$defs/unsupported"},
                {
                    "type": "object",
                    "additionalProperties": False,
                    "required": [
                        "supported",
                        "batch_size",
                        "limit",
                        "hit_limit",
                        "prompt_length",
                        "new_tokens",
                        "resident",
                        "probes",
                        "throughput",
                    ],
                    "properties": {
                        "supported": {"const": True},
                        "batch_size": {
                            "type": "integer",
                            "minimum": 0,
                            "description": "0: not even the start fits",
                        },
                        "limit": {"type": "integer", "minimum": 1},
                        "hit_limit": {"type": "boolean"},
                        "prompt_length": {"type": "integer", "minimum": 1},
                        "new_tokens": {"type": "integer", "minimum": 2},
                        "resident": {"type": "array", "items": {"type": "string"}},
                        "probes": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "additionalProperties": False,
                                "required": ["batch_size", "fits", "seconds"],
                                "properties": {
                                    "batch_size": {"type": "integer", "minimum": 1},
                                    "fits": {"type": "boolean"},
                                    "seconds": _NUM,
                                },
                            },
                        },
                        "throughput": {"$ref": "#/$defs/model_result_or_null"},
                        "stopped_by": {
                            "type": "object",
                            "description": "what ended the search before the limit, when it "
                            "was not an out-of-memory (a kernel that ended the process)",
                            "additionalProperties": False,
                            "required": ["exit_code", "reason"],
                            "properties": {
                                "exit_code": {"type": "integer"},
                                "reason": {"type": "string"},
                            },
                        },
                        "baseline": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["batch_size", "fits", "throughput", "reason"],
                            "properties": {
                                "batch_size": {"type": "integer", "minimum": 1},
                                "fits": {"type": "boolean"},
                                "throughput": {"$ref": "#/$defs/model_result_or_null"},
                                "reason": {"type": ["string", "null"]},
                            },
                        },
                        "throughput_ratio": {
                            "type": ["number", "null"],
                            "description": "arm / baseline tokens/s at the arm's largest batch",
                        },
                    },
                },
            ]
        },
    },
}
