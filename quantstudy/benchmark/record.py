"""The benchmark record: its schema, and the one place that reads and writes it."""

from __future__ import annotations

from typing import Any

from .settings import MODES

SCHEMA_ID = "quant-study/bench/1"

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
