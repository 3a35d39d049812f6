"""Batch-1 decode of Llama-3.1-8B shapes (random init) on the lent H200, per weight format and
compile mode, with the study's own code: the benchmark's static runner and decode scenario
(`quantstudy.benchmark`), the study's int4 conversion (`quantstudy.int4`) and loader (`load_arm`).

Arms are named KIND[+fused][@MODE]: KIND is bf16, an int4 kernel of quantstudy.int4 (tinygemm,
gemlite, compiled) on a data-free W4A16 arm, fp8_dynamic / fp8_weight / w8a8 (compressed-tensors
as transformers 5.17 loads them), fp8_dynamic_kernel (its opt-in FP8 layers) or fp8_scaled_mm
(those layers on torch._scaled_mm); +fused fuses the q/k/v and gate/up projections
(quantstudy.benchmark.fusion, checked against the unfused logits); MODE is the torch.compile mode
of the decode step (default reduce-overhead). Each arm is measured alone, in the order given.
The compressed-tensors arms are made data-free by llm-compressor's QuantizationModifier
(round-to-nearest: speed only, says nothing about accuracy), saved compressed and loaded back
as the workflow loads an arm. Each arm also gets a per-kernel profile of a few decode steps
(torch.profiler, CUDA kernel names and total time each).

Usage (device machine): OUT=... python bench/h200_lowbit_probe.py [arm ...] ; writes
$OUT/lowbit_probe.json after every arm, so a run cut short keeps what finished.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback

import torch

from quantstudy.benchmark.modes import ModeSpec, make_runner
from quantstudy.benchmark.scenarios import prompt_ids
from quantstudy.benchmark.timing import measure_bandwidth
from quantstudy.benchmark.weights import footprint, linear_layers, weight_bytes

OUT = os.environ.get("OUT", "/tmp/out")
DEADLINE = time.time() + float(os.environ.get("BUDGET_S", "520"))
DEV = torch.device("cuda")
SHAPES_8B = dict(
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    head_dim=128,
    num_attention_heads=32,
    num_key_value_heads=8,
    vocab_size=128256,
    max_position_embeddings=131072,
    rope_theta=500000.0,
    tie_word_embeddings=False,
    rope_scaling={
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
)
NEW, PROMPT = 128, 128
RES: dict = {}


def log(*a):
    print(f"[{time.strftime('%H:%M:%S')}]", *a, flush=True)


def save():
    os.makedirs(OUT, exist_ok=True)
    with open(f"{OUT}/lowbit_probe.json", "w") as f:
        json.dump(RES, f, indent=1)


def fresh_bf16():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(**SHAPES_8B, dtype="bfloat16")
    with torch.device(DEV):
        torch.set_default_dtype(torch.bfloat16)
        model = LlamaForCausalLM(cfg)
        torch.set_default_dtype(torch.float32)
    return model.eval()


def quantized_dir(scheme: str) -> str:
    """A compressed-tensors copy of the random model, quantized data-free and saved compressed."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier

    out = f"/tmp/arms/{scheme}"
    if os.path.isdir(out):
        return out
    model = fresh_bf16()
    # llm-compressor reads the model's config from its name_or_path: give it a saved one
    model.config.save_pretrained(f"/tmp/arms/config-{scheme}")
    model.config._name_or_path = f"/tmp/arms/config-{scheme}"
    if scheme == "FP8_WEIGHT":  # FP8 weights per channel, activations left in bf16
        fp8 = QuantizationArgs(num_bits=8, type="float", strategy="channel", symmetric=True)
        recipe = QuantizationModifier(
            config_groups={"g": QuantizationScheme(targets=["Linear"], weights=fp8)},
            ignore=["lm_head"],
        )
    else:
        recipe = QuantizationModifier(targets="Linear", scheme=scheme, ignore=["lm_head"])
    t = time.time()
    oneshot(model=model, recipe=recipe)
    model.save_pretrained(out, save_compressed=True)
    log("quantized", scheme, round(time.time() - t, 1), "s")
    del model
    torch.cuda.empty_cache()
    return out


def fp8_optimized(directory):
    """An FP8_DYNAMIC arm as transformers' opt-in FP8 path loads it (CompressedTensorsFP8Linear)."""
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    return AutoModelForCausalLM.from_pretrained(
        directory,
        device_map="cuda",
        dtype="auto",
        quantization_config=CompressedTensorsConfig(use_optimized_inference=True),
    ).eval()


def _scaled_mm_forward(self, x):
    """Dynamic per-token FP8 activations, row-wise scaled FP8 matmul via torch._scaled_mm (an aten
    op Dynamo traces, unlike torch.nn.functional.scaled_mm's _scaled_mm_v2 in torch 2.11)."""
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])
    scale = x2.abs().amax(dim=-1, keepdim=True).float().clamp(min=1e-12) / 448.0
    xq = (x2.float() / scale).clamp(-448.0, 448.0).to(torch.float8_e4m3fn)
    y = torch._scaled_mm(
        xq,
        self.weight.t(),
        scale_a=scale,
        scale_b=self.weight_scale.float().reshape(1, -1),
        out_dtype=x.dtype,
        bias=self.bias,
    )
    return y.reshape(*shape[:-1], -1)


def use_scaled_mm(model) -> int:
    """Point every CompressedTensorsFP8Linear at `_scaled_mm_forward`; how many."""
    import types

    n = 0
    for module in model.modules():
        if type(module).__name__ == "CompressedTensorsFP8Linear":
            module.forward = types.MethodType(_scaled_mm_forward, module)
            n += 1
    return n


def kernel_profile(runner, ids, steps=8):
    """CUDA kernels of `steps` decode steps (the timed runner's own cache and compiled graph,
    after two untimed steps): name, calls and total µs per step, largest first."""
    from torch.profiler import ProfilerActivity, profile

    cache = runner._cache(1, ids.shape[1] + NEW, DEV)  # the decode scenario's: no recompile
    cache.reset()
    tok = runner._call(ids, cache)
    for _ in range(2):
        tok = runner._call(tok, cache)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            tok = runner._call(tok, cache)
        torch.cuda.synchronize()
    rows = {}
    for e in prof.events():
        if e.device_type.name != "CUDA":
            continue
        r = rows.setdefault(e.name, [0, 0.0])
        r[0] += 1
        r[1] += e.device_time_total if hasattr(e, "device_time_total") else e.cuda_time_total
    total = sum(v[1] for v in rows.values())
    top = sorted(rows.items(), key=lambda kv: -kv[1][1])[:25]
    return {
        "steps": steps,
        "kernel_us_per_step": total / steps,
        "kernels": [
            {"name": n[:160], "calls_per_step": c / steps, "us_per_step": t / steps}
            for n, (c, t) in top
        ],
    }


def decode_ms(model, mode: str, label: str, fused: bool = False) -> dict:
    """The benchmark's static runner (StaticCache, the step torch.compile'd), min and median of 3
    timed decodes of NEW tokens after a 128-token prompt; then a kernel profile. `fused`: the
    projections fused first, as the benchmark's static build does."""
    from quantstudy.benchmark.fusion import fuse_checked

    spec = ModeSpec(
        "static", compiled=True, compile_mode=mode, dynamic=False, compile_prefill=False
    )
    ids = prompt_ids(int(model.config.vocab_size), 1, PROMPT, 0).to(DEV)
    fusion = fuse_checked(model, ids).record if fused else None
    runner = make_runner(model, spec)
    sample = runner.decode(ids, NEW)
    from quantstudy.benchmark.timing import Timer

    timer = Timer(DEV)
    t = time.time()
    sample(timer)  # compile, record
    compile_s = time.time() - t
    sample(timer)
    values = [sample(timer)[0]["ms_per_token"] for _ in range(3)]
    prof = kernel_profile(runner, ids)
    runner.release()
    values.sort()
    return {
        "label": label,
        "compile_mode": mode,
        "ms_per_token": values[1],
        "ms_per_token_min": values[0],
        "samples": values,
        "first_calls_s": round(compile_s, 1),
        "fusion": fusion,
        "profile": prof,
    }


def describe(model) -> dict:
    return {
        "weight_bytes_per_token": weight_bytes(model),
        "footprint": footprint(model),
        "layers": linear_layers(model),
        "cuda_allocated_bytes": torch.cuda.memory_allocated(),
    }


def run_arm(arm: str, bw: float) -> dict:
    from quantstudy import int4
    from quantstudy.loading import load_arm

    torch._dynamo.reset()
    base, _, mode = arm.partition("@")
    mode = mode or "reduce-overhead"
    base, _, fused = base.partition("+")
    rec: dict = {}
    if base == "bf16":
        model = fresh_bf16()
    elif base in ("tinygemm", "gemlite", "compiled"):
        model = load_arm(quantized_dir("W4A16"), DEV, check=False)
        t = time.time()
        rec["int4"] = int4.convert_model(model, base)
        rec["convert_s"] = round(time.time() - t, 1)
    elif base == "fp8_scaled_mm":  # the opt-in FP8 layers, their matmul on torch._scaled_mm
        model = fp8_optimized(quantized_dir("FP8_DYNAMIC"))
        rec["fp8_layers"] = use_scaled_mm(model)
        rec["scheme"] = "FP8_DYNAMIC, CompressedTensorsFP8Linear on torch._scaled_mm (row-wise)"
    elif base == "fp8_dynamic_kernel":  # transformers' opt-in FP8 path (CompressedTensorsFP8Linear)
        model = fp8_optimized(quantized_dir("FP8_DYNAMIC"))
        rec["scheme"] = "FP8_DYNAMIC, use_optimized_inference=True"
    else:  # compressed-tensors as transformers runs it by default
        scheme = {"fp8_dynamic": "FP8_DYNAMIC", "fp8_weight": "FP8_WEIGHT", "w8a8": "W8A8"}[base]
        model = load_arm(quantized_dir(scheme), DEV, check=False)
        rec["scheme"] = scheme
    with torch.inference_mode():
        ids = prompt_ids(int(model.config.vocab_size), 1, 16, 0).to(DEV)
        model(input_ids=ids)  # compressed-tensors decompresses (or not) here
        from quantstudy.benchmark.backend import remove_noop_wrappers

        rec["removed_wrappers"] = remove_noop_wrappers(model)
        rec.update(describe(model))
        rec["roofline_ms"] = rec["weight_bytes_per_token"] / bw * 1e3
        rec.update(decode_ms(model, mode, arm, fused == "fused"))
    rec["roofline_fraction"] = rec["roofline_ms"] / rec["ms_per_token"]
    del model
    torch.cuda.empty_cache()
    return rec


def main():
    arms = sys.argv[1:] or [
        "bf16+fused@max-autotune",
        "compiled+fused@max-autotune",
        "tinygemm+fused",
        "compiled@max-autotune",
        "bf16+fused",
        "bf16@max-autotune",
    ]
    import transformers

    RES["device"] = torch.cuda.get_device_name()
    RES["versions"] = {"torch": torch.__version__, "transformers": transformers.__version__}
    for name in ("gemlite", "compressed_tensors", "llmcompressor", "triton"):
        try:
            RES["versions"][name] = __import__(name).__version__
        except Exception as e:  # noqa: BLE001
            RES["versions"][name] = repr(e)[:80]
    with torch.inference_mode():
        bw = measure_bandwidth(DEV, 1 << 31, 3, 10)
    gbps = bw["gb_per_s"]["median"]
    RES["copy_bandwidth_gbps"] = gbps
    log("bandwidth", gbps)
    RES["arms"] = {}
    for arm in arms:
        if time.time() > DEADLINE:
            RES["arms"][arm] = {"skipped": "out of time"}
            continue
        t = time.time()
        try:
            RES["arms"][arm] = run_arm(arm, gbps * 1e9)
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            RES["arms"][arm] = {"error": repr(e)[:800]}
            torch.cuda.empty_cache()
        RES["arms"][arm]["wall_s"] = round(time.time() - t, 1)
        r = RES["arms"][arm]
        log(
            arm,
            {k: r.get(k) for k in ("ms_per_token", "roofline_ms", "roofline_fraction", "error")},
        )
        save()
    base = (RES["arms"].get("bf16") or {}).get("ms_per_token")
    for r in RES["arms"].values():
        if base and r.get("ms_per_token"):
            r["speedup_vs_bf16_reduce_overhead"] = base / r["ms_per_token"]
    save()


if __name__ == "__main__":
    main()
