"""From the raw results of a mode's scenarios to the record's `modes` entry: each scenario's
settings, the order of its timed calls, both models' summaries, the ratios to the baseline and
the decode roofline."""

from __future__ import annotations

from typing import Any

from .modes import ModeSpec
from .scenarios import model_entry
from .settings import LETTERS
from .timing import paired_ratios, ratio_to_baseline

PRIMARY = {  # scenario: (the value its ratio compares, the ratio's name)
    "prefill": ("ms", "time_ratio"),
    "decode": ("ms_per_token", "time_ratio"),
    "throughput": ("tokens_per_s", "throughput_ratio"),
}


def assemble_mode(
    raw_mode: dict[str, Any], settings, models_out, bandwidth_gbps, strategy
) -> dict[str, Any]:
    """A mode's record entry from `scenarios.run_modes`' raw results of that mode; unsupported
    (with the reason) when the arm failed in it."""
    spec: ModeSpec = raw_mode["spec"]
    failures = raw_mode["failures"]
    if "arm" in failures:
        return {"supported": False, "reason": failures["arm"]}
    single = strategy == "single"
    arm_spec = raw_mode.get("specs", {}).get("arm", spec)
    out: dict[str, Any] = {
        "supported": True,
        "reason": None,
        "compiled": spec.compiled,
        "compile_mode": arm_spec.compile_mode,  # the arm's (each model's: builds)
        "prefill_compiled": spec.compile_prefill,
        "description": spec.description,
        "baseline_supported": single or "baseline" not in failures,
        "baseline_reason": failures.get("baseline"),
        "prefill": [],
        "decode": None,
        "throughput": [],
        "builds": raw_mode.get("builds"),
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
            entry[name] = None if result is None or result["error"] else model_entry(result)
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
