"""quantstudy.memory: the one footprint, out-of-memory predicate and byte format of every stage."""

from __future__ import annotations

import math

import pytest
import torch

from quantstudy.memory import fmt_bytes, footprint, is_out_of_memory


def host_allocation_failure() -> RuntimeError:
    """The error PyTorch's CPU allocator raises when the host cannot give the memory asked for."""
    try:
        torch.empty(1 << 60, dtype=torch.uint8)
    except RuntimeError as error:
        return error
    raise AssertionError("allocating an exabyte succeeded")


def host_allocation_failure_raised() -> None:
    raise host_allocation_failure()


@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("CUDA error: out of memory"),
        RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 8 bytes"),
    ],
)
def test_out_of_memory_on_the_gpu_or_the_host(error):
    assert is_out_of_memory(error)


def test_a_real_host_allocation_failure_is_out_of_memory():
    assert is_out_of_memory(host_allocation_failure())


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("CUDA error: an illegal memory access was encountered"),
        RuntimeError("static is broken for this arm"),
        ValueError("arm and baseline have different vocabularies"),
    ],
)
def test_other_errors_are_not_out_of_memory(error):
    assert not is_out_of_memory(error)


def test_the_benchmark_records_a_host_allocation_failure_as_a_measurement():
    from quantstudy.benchmark.scenarios import attempt, new_result

    result = new_result(0, 1)
    assert attempt(result, host_allocation_failure_raised, torch.device("cpu")) is None
    assert result["oom"] is True and result["error"] is None


def test_footprint_counts_parameters_and_buffers():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    fp = footprint(model)
    assert fp["parameters"] == (4 * 3 + 3 + 3 + 3) * 4
    assert fp["buffers"] == 3 * 4 + 3 * 4 + 8  # running mean, var, num_batches_tracked (int64)
    assert fp["quant_state"] == 0
    assert fp["total"] == fp["parameters"] + fp["buffers"]


def test_bytes_are_written_in_mib_or_gib():
    assert fmt_bytes(3 * 2**20) == "3.0 MiB"
    assert fmt_bytes(2**30) == "1.00 GiB"
    assert fmt_bytes(None) == fmt_bytes(math.nan) == "–"


def test_int8_row_scales_count_before_and_after_the_first_forward(tmp_path):
    """bitsandbytes moves int8's scales (SCB) from the weight to the layer's state on its first
    forward; the footprint counts them once, wherever they are."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=128)  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    int8 = AutoModelForCausalLM.from_pretrained(
        tmp_path, quantization_config=BitsAndBytesConfig(load_in_8bit=True), device_map="cpu"
    )
    rows = 64 + 32 + 32 + 64 + 128 + 128 + 64  # output rows of one layer's seven Linears
    before = footprint(int8)
    assert before["quant_state"] == rows * 4  # one fp32 scale per row
    with torch.inference_mode():
        int8(input_ids=torch.zeros((1, 4), dtype=torch.long))
    layer = int8.model.layers[0].self_attn.q_proj
    assert layer.weight.SCB is None and layer.state.SCB is not None  # moved, as described
    assert footprint(int8) == before
