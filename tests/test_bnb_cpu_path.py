"""bitsandbytes' 4-bit CPU paths: the reference one the workflow runs, and the packed AVX512-BF16 one.

On a CPU with AVX512-BF16, bitsandbytes 0.50 repacks a Linear4bit's weight on its first forward
(nested absmax dequantized, absmax and compute in bf16). These tests hold on both kinds of CPU:
the packed-path tests run only where the CPU has it and are skipped, with the reason, elsewhere.
"""

from __future__ import annotations

import json

import pytest
import torch

from quantstudy.arms import parse_arm
from quantstudy.loading import (
    PACKED,
    REFERENCE,
    bnb_cpu_record,
    has_avx512bf16,
    is_repacked,
    linear4bit_modules,
    load_arm,
)
from quantstudy.quantize import linear_names, quantize_arm, verify_arm

NF4_DQ = {
    "method": "bnb-4bit",
    "quant_type": "nf4",
    "double_quant": True,
    "compute_dtype": "fp32",
    "dtype": "fp32",
}
needs_avx512bf16 = pytest.mark.skipif(
    not has_avx512bf16(),
    reason="this CPU has no AVX512-BF16: bitsandbytes' packed 4-bit CPU path cannot run here",
)


def test_cpu_kind_is_reported():
    """Printed with -rA so a CI log says which kind of CPU its 4-bit results came from."""
    record = bnb_cpu_record()
    print(f"CPU capability {record['cpu_capability']}, AVX512-BF16 {record['bnb_avx512bf16']}")
    assert record["bnb_cpu_path"] is None


@pytest.fixture(scope="module")
def nf4_dq(tiny_source, tmp_path_factory):
    """An NF4 arm with double quant, built through the workflow's path (reference CPU kernel)."""
    out = tmp_path_factory.mktemp("nf4") / "nf4_dq"
    quantize_arm(parse_arm("nf4_dq", NF4_DQ), tiny_source, out, device="cpu")
    return out


def _dense_reference_logits(model, ids):
    """The model's logits with every 4-bit layer replaced by its dequantized fp32 weight."""
    import bitsandbytes.functional as F

    hooks = []
    for module in linear4bit_modules(model):
        weight = F.dequantize_4bit(module.weight.data, module.weight.quant_state).float()
        bias = module.bias

        def dense(mod, args, out, weight=weight, bias=bias):
            return torch.nn.functional.linear(args[0].float(), weight, bias)

        hooks.append(module.register_forward_hook(dense))
    try:
        return model(ids).logits.float()
    finally:
        for h in hooks:
            h.remove()


@torch.inference_mode()
def test_reference_path_computes_in_the_configured_dtype_and_keeps_the_state(nf4_dq):
    """On every CPU the loaded arm computes exactly as its dequantized fp32 weights do (compute
    dtype fp32 as configured), and a forward leaves the saved quant state as it was."""
    model = load_arm(nf4_dq, "cpu")
    ids = torch.tensor([[1, 5, 9, 42, 7]])
    reference = _dense_reference_logits(model, ids)  # hooks run no Linear4bit.forward
    layers = linear4bit_modules(model)
    assert not any(is_repacked(m) for m in layers)
    logits = model(ids).logits.float()
    assert not any(is_repacked(m) for m in layers), "a forward repacked a 4-bit layer"
    states = [m.weight.quant_state for m in layers]
    assert {s.nested for s in states} == {True}
    assert {s.absmax.dtype for s in states} == {torch.uint8}
    assert {m.compute_dtype for m in layers} == {torch.float32}
    torch.testing.assert_close(logits, reference, rtol=1e-5, atol=1e-5)
    assert bnb_cpu_record(model)["bnb_cpu_path"] == REFERENCE


def test_records_say_which_path_ran(nf4_dq):
    device = json.loads((nf4_dq / "quantize.json").read_text())["device"]
    assert device["bnb_cpu_path"] == REFERENCE
    assert device["bnb_avx512bf16"] == has_avx512bf16()
    assert device["cpu_capability"] == torch.backends.cpu.get_cpu_capability()


def _repack_all(model):
    """What a forward on the packed path does to every 4-bit layer's state, applied directly
    (bitsandbytes' own conversion: plain torch, so it runs on any CPU)."""
    from bitsandbytes.functional import _convert_weight_packed_for_cpu

    for module in linear4bit_modules(model):
        module.weight.data, module.weight.quant_state = _convert_weight_packed_for_cpu(
            module.weight.data, module.weight.quant_state
        )


def test_verification_refuses_state_a_forward_changed(nf4_dq, tiny_source):
    """verify_arm reads the 4-bit state as loaded; given a repacked model it fails, so moving a
    forward in front of it cannot go unnoticed on any CPU."""
    from transformers import AutoModelForCausalLM

    arm = parse_arm("nf4_dq", NF4_DQ)
    linears = linear_names(AutoModelForCausalLM.from_pretrained(tiny_source, device_map="meta"))
    model = load_arm(nf4_dq, "cpu")
    assert verify_arm(arm, model, nf4_dq, linears)["quantized_modules"] > 0
    _repack_all(model)
    with pytest.raises(AssertionError, match="repacked by a forward"):
        verify_arm(arm, model, nf4_dq, linears)


@needs_avx512bf16
@torch.inference_mode()
def test_a_packed_forward_repacks_and_verification_refuses_it(nf4_dq, tiny_source):
    """The real kernel: with the packed path allowed, one forward changes the state (bf16
    compute, nested absmax gone), and verification after it fails."""
    from transformers import AutoModelForCausalLM

    arm = parse_arm("nf4_dq", NF4_DQ)
    linears = linear_names(AutoModelForCausalLM.from_pretrained(tiny_source, device_map="meta"))
    model = load_arm(nf4_dq, "cpu", packed=True)
    model(torch.tensor([[1, 5, 9]]))
    layers = linear4bit_modules(model)
    assert all(is_repacked(m) for m in layers)
    assert {m.weight.quant_state.nested for m in layers} == {False}
    assert bnb_cpu_record(model)["bnb_cpu_path"] == PACKED
    with pytest.raises(AssertionError, match="repacked by a forward"):
        verify_arm(arm, model, nf4_dq, linears)


@needs_avx512bf16
@pytest.mark.parametrize("double_quant", [True, False])
def test_packed_path_gives_a_verified_arm(tiny_source, tmp_path, double_quant):
    """Built, saved, reloaded and verified with the packed path allowed: the saved file is what
    bitsandbytes quantized (equal to the reference-path build), and quantize.json says "packed"."""
    spec = dict(NF4_DQ, double_quant=double_quant)
    records = {}
    for packed in (False, True):
        out = tmp_path / f"packed-{packed}"
        records[packed] = quantize_arm(
            parse_arm("nf4", spec), tiny_source, out, device="cpu", bnb_cpu_packed=packed
        )
        assert records[packed]["verified"]["quantized_modules"] > 0
    assert records[True]["device"]["bnb_cpu_path"] == PACKED
    assert records[False]["device"]["bnb_cpu_path"] == REFERENCE
    assert records[True]["sha256"] == records[False]["sha256"]
    assert records[True]["memory_bytes"] == records[False]["memory_bytes"]
