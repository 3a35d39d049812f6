"""What a benchmark job measures and how often: the default settings, and a job's own overlaid on
them (an unknown key or a bad value fails naming it)."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

MODES = ("eager", "static", "dense")
# "dense": the static mode on a GPTQ/AWQ or FP8-dynamic arm as transformers runs it (layers
# decompressed to bf16), beside the low-bit kernel's static mode, so the cost of decompressing
# stays visible; it runs only where the arm's layers went to an int4 or FP8 kernel, and has no
# largest-batch search.
LARGEST_BATCH_MODES = ("eager", "static")
# Values of settings.int4_kernel: quantstudy.int4.KERNELS, dense (no conversion), or auto (kept
# literal here so that reading settings imports no torch; a test holds the two together).
INT4_KERNELS = ("auto", "dense", "tinygemm", "gemlite", "compiled")
# Values of settings.fp8_kernel: quantstudy.fp8.KERNELS, dense, or auto (the same test holds them).
FP8_KERNELS = ("auto", "dense", "scaled_mm")
# torch.compile's modes (torch._inductor.list_mode_options), for settings.static.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# Letters of the `order` strings: which model each timed call measured.
LETTERS = {"arm": "A", "baseline": "B"}

DEFAULT_SETTINGS: dict[str, Any] = {
    "seed": 0,  # prompts: token ids drawn from torch.Generator().manual_seed(seed) over the vocab
    "warmup": 3,  # untimed calls per model and scenario (>= 3 where compiled: compile, record, replay)
    "repeats": 5,  # timed calls per model and scenario, interleaved A B A B …
    "interleave": "auto",  # true: both models resident; false: one after the other; auto: true unless it does not fit
    "remove_noop_wrappers": True,  # compressed-tensors wrappers that change nothing (remove_noop_wrappers)
    # GPTQ/AWQ (compressed-tensors packed int4) arms: the int4 kernel they run (quantstudy.int4):
    # tinygemm, gemlite, compiled (dequantization fused by torch.compile), or dense (transformers
    # decompresses to bf16); auto: tinygemm on CUDA, dense on the CPU
    "int4_kernel": "auto",
    # FP8-dynamic arms (FP8 weights, activations quantized per token; quantstudy.fp8): scaled_mm
    # (FP8 weights kept, the product in aten._scaled_mm) or dense (transformers decompresses the
    # weights and fake-quantizes the activations: no CUDA graph); auto: scaled_mm on GPUs with
    # FP8 tensor cores (compute capability 8.9 and up), dense elsewhere
    "fp8_kernel": "auto",
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
        # more compile modes to build each model's decode step with (e.g. [max-autotune]): every
        # model keeps the mode whose step decoded fastest (a short timed decode per mode; each
        # model's choice and the times are in the record's modes.<mode>.builds)
        "try_compile_modes": [],
        # one matmul for the q/k/v projections and one for gate/up where the layers allow
        # (quantstudy.benchmark.fusion; each stacked layer checked against the layers it
        # replaces); auto: where compiled
        "fuse_projections": "auto",
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


def resolve_settings(settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """DEFAULT_SETTINGS overlaid with `settings`; an unknown key or a bad value raises ValueError."""
    out = copy.deepcopy(DEFAULT_SETTINGS)
    _overlay(out, settings or {}, "settings")
    for section in ("prefill", "decode", "throughput", "largest_batch"):
        bad = set(out[section]["modes"]) - set(MODES)
        if bad:
            raise ValueError(f"settings.{section}.modes: {sorted(bad)} not among {list(MODES)}")
    bad = set(out["largest_batch"]["modes"]) - set(LARGEST_BATCH_MODES)
    if bad:
        raise ValueError(
            f"settings.largest_batch.modes: {sorted(bad)} not among {list(LARGEST_BATCH_MODES)}"
        )
    for section in ("decode", "throughput", "largest_batch"):
        if out[section]["new_tokens"] < 2:
            raise ValueError(f"settings.{section}.new_tokens must be >= 2 (decode needs a step)")
    if out["interleave"] not in ("auto", True, False):
        raise ValueError("settings.interleave: one of 'auto', true, false")
    if out["int4_kernel"] not in INT4_KERNELS:
        raise ValueError(f"settings.int4_kernel: one of {', '.join(INT4_KERNELS)}")
    if out["fp8_kernel"] not in FP8_KERNELS:
        raise ValueError(f"settings.fp8_kernel: one of {', '.join(FP8_KERNELS)}")
    if out["static"]["compile"] not in ("auto", True, False):
        raise ValueError("settings.static.compile: one of 'auto', true, false")
    modes = [out["static"]["compile_mode"], *out["static"]["try_compile_modes"]]
    bad = [m for m in modes if m not in COMPILE_MODES]
    if bad:
        key = "compile_mode" if out["static"]["compile_mode"] in bad else "try_compile_modes"
        raise ValueError(
            f"settings.static.{key}: {bad[0]!r} is not one of {', '.join(COMPILE_MODES)}"
        )
    if out["static"]["fuse_projections"] not in ("auto", True, False):
        raise ValueError("settings.static.fuse_projections: one of 'auto', true, false")
    return out


def llamacpp_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The settings a GGUF arm's job runs under (quantstudy.llamacpp): mode eager only, since
    llama.cpp runs its own graph whatever the mode and static would measure it twice; batch size
    1, since llama-cpp-python runs one sequence at a time; no largest-batch search. The record's
    `settings` are these, so the report shows what was measured."""
    out = copy.deepcopy(dict(settings))
    for section in ("prefill", "decode", "throughput"):
        out[section]["modes"] = [m for m in out[section]["modes"] if m == "eager"]
    out["prefill"]["batch_size"] = out["decode"]["batch_size"] = 1
    out["throughput"]["batch_sizes"] = [b for b in out["throughput"]["batch_sizes"] if b == 1]
    out["largest_batch"]["modes"] = []
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


def int4_kernel(settings: Mapping[str, Any], device_type: str) -> str:
    """The int4 kernel packed int4 arms run under the settings on a device type (`auto`:
    tinygemm on CUDA, dense elsewhere, so CPU runs keep transformers' dense path)."""
    kernel = settings["int4_kernel"]
    if kernel == "auto":
        return "tinygemm" if device_type == "cuda" else "dense"
    return kernel


def kernels(settings: Mapping[str, Any], device) -> dict[str, str]:
    """The low-bit kernels arms run under the settings on a device (`quantstudy.int4`,
    `quantstudy.fp8`; "dense" = transformers' own path): int4 as `int4_kernel` says; FP8 `auto`
    = scaled_mm on a CUDA device of compute capability 8.9 or more, dense elsewhere."""
    import torch

    device = torch.device(device)
    fp8 = settings["fp8_kernel"]
    if fp8 == "auto":
        fp8_ok = device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)
        fp8 = "scaled_mm" if fp8_ok else "dense"
    return {"int4": int4_kernel(settings, device.type), "fp8": fp8}


DENSE_KERNELS = {"int4": "dense", "fp8": "dense"}


def scenario_counts(settings: Mapping[str, Any], section: str) -> tuple[int, int]:
    """(warmup, repeats) of a scenario section, falling back to the top-level values."""
    sec = settings[section]
    warmup = settings["warmup"] if sec.get("warmup") is None else sec["warmup"]
    repeats = settings["repeats"] if sec.get("repeats") is None else sec["repeats"]
    return int(warmup), int(repeats)


def settings_at_batch(settings: Mapping[str, Any], batch: int) -> dict[str, Any]:
    """A copy of the settings whose largest-batch search tries exactly `batch`."""
    out = copy.deepcopy(dict(settings))
    out["largest_batch"] = {**out["largest_batch"], "start": batch, "limit": batch}
    return out
