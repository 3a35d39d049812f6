"""What is measured: prefill latency, decode latency and generation throughput, each of one or
two models measured alternately (A B A B … per repeat, A = arm, B = baseline) so that clock,
thermal and neighbour drift hits both alike. An out-of-memory error is a measurement (`oom`);
any other error is recorded and drops that model from the mode's remaining scenarios."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, TypeVar

import torch

from ..memory import is_out_of_memory
from .modes import ModeSpec, Sample, make_runner, mode_spec
from .settings import MODES, scenario_counts
from .timing import Memory, Timer, TimerFn, free_memory, interleave, max_memory, stats, synchronize

log = logging.getLogger(__name__)

T = TypeVar("T")


def prompt_ids(vocab_size: int, batch: int, length: int, seed: int) -> torch.Tensor:
    """Fixed prompts: token ids from a seeded generator over the vocabulary (same for every arm;
    the first rows of a larger batch equal the rows of a smaller one)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch, length), generator=generator, dtype=torch.long)


def new_result(warmup: int, repeats: int) -> dict[str, Any]:
    """An empty result of one model in one scenario, filled by `attempt` and `_contest`."""
    return {
        "values": {},
        "memory": None,
        "oom": False,
        "error": None,
        "first_call_s": None,
        "warmup": warmup,
        "repeats": repeats,
    }


def attempt(result: dict[str, Any], fn: Callable[[], T], device: torch.device) -> T | None:
    """fn(), unless this model already failed or ran out of memory here; an out-of-memory error is
    recorded (`oom`) and memory freed, any other error recorded (`error`)."""
    if result["oom"] or result["error"]:
        return None
    oom = False
    try:
        return fn()
    except Exception as error:  # noqa: BLE001 - recorded, the caller decides
        if is_out_of_memory(error):
            oom = True
        else:
            log.exception("measurement failed")
            result["error"] = f"{type(error).__name__}: {error}"
    if oom:  # outside the except block, so the traceback's tensors can be freed
        result["oom"] = True
        free_memory(device, full=True)
    return None


# One spec for every model of a scenario, or each model's own (static builds differ per model).
Specs = ModeSpec | Mapping[str, ModeSpec]


def _contest(
    models: Mapping[str, Any],
    spec: Specs,
    make: Callable[[Any], Sample],
    warmup: int,
    repeats: int,
    timer: TimerFn,
    device: torch.device,
) -> dict[str, Any]:
    """Measure one scenario on every model (each under its own spec where `spec` maps names to
    specs): warm-ups, then `repeats` timed samples interleaved in the mapping's order. Returns
    {"order": [name per timed call], "results": {name: result}}."""
    specs = spec if isinstance(spec, Mapping) else dict.fromkeys(models, spec)
    if any(specs[name].compiled for name in models):
        warmup = max(warmup, 3)  # compile + eager run, CUDA-graph recording, first replay
    runners = {name: make_runner(model, specs[name]) for name, model in models.items()}
    results = {name: new_result(warmup, repeats) for name in models}
    order: list[str] = []
    samples: dict[str, Sample | None] = {}
    try:
        for name, runner in runners.items():
            samples[name] = attempt(results[name], lambda r=runner: make(r), device)

        def one(name: str) -> tuple[dict[str, float], Memory | None] | None:
            sample = samples[name]
            if sample is None:
                return None
            return attempt(results[name], lambda: sample(timer), device)

        for i in range(warmup):
            for name in runners:
                start = time.perf_counter()
                if one(name) is not None and i == 0:
                    synchronize(device)
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
            results[name]["memory"] = max_memory(*(memory for _, memory in done))
    finally:
        samples.clear()  # the samples hold the caches: drop them before freeing memory
        for runner in runners.values():
            runner.release()
        del runners
        free_memory(device)
    return {"order": order, "results": results}


def time_prefill(
    models: Mapping[str, Any],
    ids: torch.Tensor,
    *,
    spec: Specs | None = None,
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
    spec: Specs | None = None,
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
    spec: Specs | None = None,
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


def planned(settings: Mapping[str, Any], mode: str) -> bool:
    """Whether the settings measure anything in a mode."""
    return bool(_scenario_plan(settings, mode))


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
        warmup, repeats = scenario_counts(settings, "prefill")
        ids = prompt_ids(vocab, settings["prefill"]["batch_size"], key[1], seed).to(device)
        return time_prefill(models, ids, spec=spec, warmup=warmup, repeats=repeats, timer=timer)
    if key[0] == "decode":
        sec = settings["decode"]
        warmup, repeats = scenario_counts(settings, "decode")
        ids = prompt_ids(vocab, sec["batch_size"], sec["prompt_length"], seed).to(device)
        return time_decode(
            models, ids, sec["new_tokens"], spec=spec, warmup=warmup, repeats=repeats, timer=timer
        )
    sec = settings["throughput"]
    warmup, repeats = scenario_counts(settings, "throughput")
    ids = prompt_ids(vocab, key[1], sec["prompt_length"], seed).to(device)
    return throughput(
        models, ids, sec["new_tokens"], spec=spec, warmup=warmup, repeats=repeats, timer=timer
    )


def run_modes(
    models: Mapping[str, Any], settings, vocab, timer, device, modes=MODES, chosen=None
) -> dict[str, Any]:
    """Every planned scenario of each of `modes`, models interleaved. A model that fails (not out
    of memory) in a mode is dropped from that mode's remaining scenarios; its reason is kept.
    Each model's step in a static-like mode is built first (`build_steps`; `chosen` keeps each
    model's compile-mode choice for later calls); its fused layers are put back after the mode."""
    raw: dict[str, Any] = {}
    for mode in modes:
        plan = _scenario_plan(settings, mode)
        if not plan:
            continue
        spec = mode_spec(mode, settings, device)
        active = dict(models)
        failures: dict[str, str] = {}
        scenarios: dict[tuple, Any] = {}
        specs, builds, undo = build_steps(models, spec, settings, vocab, timer, device, chosen)
        try:
            for key in plan:
                if not active:
                    break
                log.info("mode %s, scenario %s: %s", mode, key, ", ".join(active))
                scenario = _run_scenario(key, active, specs, settings, vocab, timer, device)
                scenarios[key] = scenario
                for name, result in scenario["results"].items():
                    if result["error"]:
                        failures[name] = f"{'/'.join(map(str, key))}: {result['error']}"
                        active.pop(name)
                        log.warning("%s cannot run mode %s: %s", name, mode, failures[name])
        finally:
            for fn in undo:
                fn()
        raw[mode] = {
            "spec": spec,
            "specs": specs,
            "builds": builds,
            "failures": failures,
            "scenarios": scenarios,
            "plan": plan,
        }
    return raw


def build_steps(
    models: Mapping[str, Any], spec: ModeSpec, settings, vocab, timer, device, chosen=None
) -> tuple[dict[str, ModeSpec], dict[str, Any] | None, list[Callable[[], None]]]:
    """How each model's step is built in a static-like mode: its projections fused where the spec
    says so and its layers allow (`fusion.fuse_checked`, on the decode prompt), then, where the
    spec lists more than one compile mode, each mode timed on a short decode (the decode
    scenario's prompt and tokens, three warm-ups and two timed runs) and the fastest kept.
    A model found in `chosen` (model: (compile mode, tried)) keeps the choice made before, and
    each choice made here is added to it. Returns (spec per model, the builds' record per model or
    None where nothing is chosen or fused, functions that undo the fusions)."""
    chosen = {} if chosen is None else chosen
    specs = dict.fromkeys(models, spec)
    if spec.name == "eager" or not (spec.fuse or len(spec.compile_modes) > 1):
        return specs, None, []
    from .fusion import fuse_checked

    sec = settings["decode"]
    ids = prompt_ids(vocab, sec["batch_size"], sec["prompt_length"], settings["seed"]).to(device)
    builds: dict[str, Any] = {}
    undo: list[Callable[[], None]] = []
    for name, model in models.items():
        if getattr(model, "runtime", None) == "llama.cpp":
            continue
        build: dict[str, Any] = {"compile_mode": spec.compile_mode, "fusion": None, "tried": None}
        if spec.fuse:
            fusion = fuse_checked(model, ids)
            undo.append(fusion.undo)
            build["fusion"] = fusion.record
        if len(spec.compile_modes) > 1:
            if model not in chosen:
                chosen[model] = _fastest_compile_mode(name, model, spec, ids, sec, timer)
            build["compile_mode"], build["tried"] = chosen[model]
            specs[name] = replace(spec, compile_mode=build["compile_mode"])
        builds[name] = build
    return specs, builds, undo


def _fastest_compile_mode(name, model, spec, ids, sec, timer) -> tuple[str, dict[str, Any]]:
    """(the compile mode whose step decoded fastest, {mode: ms_per_token and error} of each of
    spec.compile_modes): a short decode per mode, three warm-ups and two timed runs; the spec's
    own mode where none ran."""
    tried: dict[str, Any] = {}
    for mode in spec.compile_modes:
        log.info("building %s's step with compile mode %s", name, mode)
        result = time_decode(
            {name: model}, ids, sec["new_tokens"], spec=replace(spec, compile_mode=mode),
            warmup=3, repeats=2, timer=timer,
        )["results"][name]  # fmt: skip
        times = result["values"].get("ms_per_token")
        tried[mode] = {
            "ms_per_token": min(times) if times else None,
            "error": result["error"] or ("out of memory" if result["oom"] else None),
        }
        # in the log too: a job cut short (a device call's limit) leaves its builds' times there
        log.info("%s's step with compile mode %s: %s", name, mode, tried[mode])
    timed = {m: t["ms_per_token"] for m, t in tried.items() if t["ms_per_token"]}
    return (min(timed, key=timed.get) if timed else spec.compile_mode), tried


def merge_raw(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
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
        builds = {**(a.get("builds") or {}), **(b.get("builds") or {})} or None
        merged[mode] = a | {
            "failures": a["failures"] | b["failures"],
            "scenarios": scenarios,
            "specs": {**a.get("specs", {}), **b.get("specs", {})},
            "builds": builds,
        }
    return merged


def model_entry(result: dict[str, Any]) -> dict[str, Any]:
    """A model's result as the record holds it (the schema's model_result): stats per value."""
    entry = {key: stats(values) for key, values in result["values"].items()}
    entry.update(
        memory=result["memory"],
        oom=result["oom"],
        first_call_s=result["first_call_s"],
        warmup=result["warmup"],
        repeats=result["repeats"],
    )
    return entry
