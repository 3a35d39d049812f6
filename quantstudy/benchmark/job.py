"""The benchmark job: one arm measured beside the baseline in the same job, every mode and
scenario, the largest batch that fits, and the record (`schemas/benchmark.schema.yaml`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..device import device_record, resolve_device
from ..loading import is_gguf_arm
from ..memory import is_out_of_memory
from ..provenance import code_version
from .assemble import assemble_mode
from .backend import check_vocab, load_model, model_record, name_of, vocab_size
from .isolation import largest_batch_isolated
from .modes import LLAMACPP_DESCRIPTION, mode_spec
from .record import SCHEMA_ID
from .scenarios import merge_raw, planned, prompt_ids, run_modes
from .search import largest_batch_for
from .settings import (
    DENSE_KERNELS,
    LARGEST_BATCH_MODES,
    kernels,
    llamacpp_settings,
    resolve_settings,
    settings_at_batch,
)
from .timing import Timer, TimerFn, free_memory, measure_bandwidth

MAIN_MODES = LARGEST_BATCH_MODES  # the modes every model runs; "dense" runs separately

log = logging.getLogger(__name__)


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
    """Benchmark one arm beside the baseline; returns the record that
    schemas/benchmark.schema.yaml describes (`record.write` checks and writes it).

    `timer` replaces the device timer (tests inject a fake clock); names default to quantize.json's
    `arm`, else the directory's name."""
    wall_start = time.perf_counter()
    settings = resolve_settings(settings)
    gguf = is_gguf_arm(arm_dir)
    if gguf:
        settings = llamacpp_settings(settings)
    device = resolve_device(device)
    timer = timer or Timer(device)
    arm_dir, baseline_dir = Path(arm_dir), Path(baseline_dir)
    is_baseline = arm_dir.resolve() == baseline_dir.resolve()
    arm_name = arm_name or name_of(arm_dir)
    baseline_name = arm_name if is_baseline else (baseline_name or name_of(baseline_dir))
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

    arm_kernels = kernels(settings, device)

    def load(name: str, directory: Path, low_bit: dict[str, str] = arm_kernels) -> None:
        model, seconds, allocated = load_model(directory, device, low_bit)
        vocab = vocab_size(model)
        warm = prompt_ids(vocab, 1, settings["decode"]["prompt_length"], settings["seed"]).to(
            device
        )
        with torch.inference_mode():
            models_out[name] = model_record(
                baseline_name if name == "baseline" else arm_name,
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
        free_memory(device, full=True)

    if strategy == "interleaved":
        try:
            load("baseline", baseline_dir)
            load("arm", arm_dir)
        except Exception as error:  # noqa: BLE001 - only running out of memory falls back
            if not is_out_of_memory(error) or settings["interleave"] is True:
                raise
            strategy_reason = (
                f"arm and baseline do not fit together: {type(error).__name__}: {error}"
            )
        if strategy_reason:
            strategy = "sequential"
            unload("arm")
            unload("baseline")
            log.warning("%s; measuring one after the other", strategy_reason)

    chosen: dict = {}  # each model's compile mode, chosen once (static) and kept (dense)
    with torch.inference_mode():
        if strategy == "interleaved":
            check_vocab(loaded)
            vocab = vocab_size(loaded["arm"])
            raw = run_modes(
                {"arm": loaded["arm"], "baseline": loaded["baseline"]},
                settings,
                vocab,
                timer,
                device,
                MAIN_MODES,
                chosen,
            )
        elif strategy == "sequential":
            load("baseline", baseline_dir)
            vocab = vocab_size(loaded["baseline"])
            raw_base = run_modes(
                {"baseline": loaded["baseline"]}, settings, vocab, timer, device, MAIN_MODES
            )
            unload("baseline")
            load("arm", arm_dir)
            if vocab_size(loaded["arm"]) != vocab:
                raise ValueError("arm and baseline have different vocabularies")
            raw = merge_raw(
                raw_base,
                run_modes({"arm": loaded["arm"]}, settings, vocab, timer, device, MAIN_MODES),
            )
        else:
            load("arm", arm_dir)
            vocab = vocab_size(loaded["arm"])
            raw = run_modes({"arm": loaded["arm"]}, settings, vocab, timer, device, MAIN_MODES)

        modes = {
            mode: assemble_mode(raw_mode, settings, models_out, bandwidth_gbps, strategy)
            for mode, raw_mode in raw.items()
        }
        if gguf:
            for entry in modes.values():
                entry["description"] = (
                    f"arm: llama.cpp ({LLAMACPP_DESCRIPTION}); baseline: {entry['description']}"
                )
        on_kernel = any(
            (models_out["arm"].get(kind) or {}).get("kernel") not in (None, "dense")
            for kind in DENSE_KERNELS
        )
        if planned(settings, "dense") and on_kernel:
            # the same arm as transformers runs it, beside the baseline where it is resident
            load("arm_dense", arm_dir, DENSE_KERNELS)
            pair = {"arm": loaded["arm_dense"]}
            if "baseline" in loaded:
                pair["baseline"] = loaded["baseline"]
            raw_dense = run_modes(pair, settings, vocab, timer, device, ("dense",), chosen)["dense"]
            unload("arm_dense")
            dense_models = {**models_out, "arm": models_out["arm_dense"]}
            modes["dense"] = assemble_mode(
                raw_dense, settings, dense_models, bandwidth_gbps, strategy
            )
        unload("baseline")
        largest = {}
        isolate = settings["largest_batch"].get("isolate", "auto")
        isolate = device.type == "cuda" if isolate == "auto" else bool(isolate)
        if isolate:
            unload("arm")  # the child process loads its own copy
        for mode in settings["largest_batch"]["modes"]:
            if isolate:
                largest[mode] = largest_batch_isolated(arm_dir, mode, settings, device)
            else:
                spec = mode_spec(mode, settings, device)
                largest[mode] = largest_batch_for(
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
    at_batch = settings_at_batch(settings, batch)
    if isolate:
        base = largest_batch_isolated(baseline_dir, mode, at_batch, device)
    else:
        model, _, _ = load_model(baseline_dir, device)
        spec = mode_spec(mode, at_batch, device)
        base = largest_batch_for("baseline", model, spec, at_batch, vocab, timer, device)
        del model
        free_memory(device, full=True)
    base_tps = ((base.get("throughput") or {}).get("tokens_per_s") or {}).get("median")
    fitted = bool(base.get("supported")) and base.get("batch_size") == batch
    result["baseline"] = {
        "batch_size": batch,
        "fits": fitted,
        "throughput": base.get("throughput") if fitted else None,
        "reason": None if fitted else base.get("reason") or "the baseline did not fit this batch",
    }
    result["throughput_ratio"] = arm_tps / base_tps if fitted and base_tps else None
