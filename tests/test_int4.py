"""GPTQ/AWQ layers on a real int4 kernel (quantstudy.int4): every converted layer against the
dense layer compressed-tensors' own decompression gives. torch's tinygemm kernel has a CPU twin,
so the conversion is checked here; the CUDA kernels (tinygemm, gemlite) are checked on the GPU
machine (skipped here, with the reason)."""

from __future__ import annotations

import pytest
import torch

from quantstudy import int4

from .conftest import LOW_BIT_BENCH_SETTINGS

HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="CUDA kernels: run on the GPU machine")


def _gemlite_missing() -> bool:
    try:
        import gemlite  # noqa: F401
    except ImportError:
        return True
    return False


def packed_layer(out=96, inp=256, group=32, symmetric=True, actorder=False, seed=0, device="cpu"):
    """A Linear as transformers loads a compressed-tensors pack-quantized layer, made by
    compressed-tensors' own compressor from a random weight."""
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from compressed_tensors.quantization.utils import calculate_qparams

    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(out, inp, generator=g).to(torch.bfloat16)
    args = QuantizationArgs(
        num_bits=4, type="int", strategy="group", group_size=group, symmetric=symmetric
    )
    scheme = QuantizationScheme(targets=["Linear"], weights=args)
    grouped = weight.float().view(out, inp // group, group)
    scale, zero = calculate_qparams(grouped.amin(-1), grouped.amax(-1), args)
    state = {"weight": weight, "weight_scale": scale.to(torch.bfloat16)}
    if not symmetric:
        state["weight_zero_point"] = zero
    if actorder:  # columns assigned to groups in a random order, as activation order does
        g_idx = torch.randperm(inp, generator=g) // group
        state["weight_g_idx"] = g_idx.to(torch.int32)
    packed = PackedQuantizationCompressor.compress(state, scheme)
    layer = torch.nn.Linear(inp, out, bias=False)
    del layer.weight
    for name, value in packed.items():
        layer.register_parameter(name, torch.nn.Parameter(value.to(device), requires_grad=False))
    if actorder:
        layer.register_parameter(
            "weight_g_idx", torch.nn.Parameter(state["weight_g_idx"].to(device), False)
        )
    layer.quantization_scheme = scheme
    return layer


def reference_with_g_idx(layer) -> torch.Tensor:
    """The dense weight as g_idx defines it (column j uses the scale and zero point of group
    g_idx[j]), column by column from compressed-tensors' unpacking (compressed-tensors 0.19 no
    longer reads g_idx; older checkpoints saved with activation order hold one)."""
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32

    shape = torch.Size(layer.weight_shape.tolist())
    q = unpack_from_int32(layer.weight_packed.data, 4, shape).float()
    scale = layer.weight_scale.data.float()
    zero = torch.zeros_like(scale)
    if not layer.quantization_scheme.weights.symmetric:
        zero = unpack_from_int32(
            layer.weight_zero_point.data, 4, layer.weight_scale.shape, packed_dim=0
        ).float()
    out = torch.empty_like(q)
    for j, group in enumerate(layer.weight_g_idx.data.tolist()):
        out[:, j] = (q[:, j] - zero[:, group]) * scale[:, group]
    return out.to(layer.weight_scale.dtype)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("group", [32, 128])
def test_unpacked_weights_dequantize_as_compressed_tensors_does(symmetric, group):
    layer = packed_layer(group=group, symmetric=symmetric)
    assert int4.is_packed_int4(layer)
    w = int4.unpack(layer)
    assert w.q.dtype == torch.int8 and int(w.q.min()) >= -8 and int(w.q.max()) <= 7
    assert (w.zero is None) == symmetric
    ref = int4.reference_weight(layer)  # bf16, as compressed-tensors computes it
    torch.testing.assert_close(int4.dequantize(w, ref.dtype), ref, rtol=2**-8, atol=0)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("group", [32, 64, 128])
def test_tinygemm_layer_matches_the_dense_layer_on_cpu(symmetric, group):
    layer = packed_layer(group=group, symmetric=symmetric)
    converted = int4.to_tinygemm(int4.unpack(layer), None, torch.bfloat16)
    error = int4.check_layer(converted, int4.reference_weight(layer), None, torch.bfloat16)
    assert error < 1e-2
    x = torch.randn(3, 5, 256, dtype=torch.bfloat16)
    assert converted(x).shape == (3, 5, 96)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("actorder", [False, True])
def test_compiled_layer_makes_compressed_tensors_own_weight(symmetric, actorder):
    """The `compiled` kernel's dequantization in torch ops gives, bit for bit, the dense bf16
    weight compressed-tensors decompresses to (in its column order, where g_idx permutes)."""
    layer = packed_layer(group=32, symmetric=symmetric, actorder=actorder)
    w = int4.unpack(layer)
    ref = reference_with_g_idx(layer) if actorder else int4.reference_weight(layer)
    converted = int4.to_compiled(w, None, torch.bfloat16)
    assert converted.packed.dtype == torch.uint8 and converted.packed.shape == (96, 128)
    assert (converted.zero is None) == symmetric
    dense = converted.weight()
    if actorder:  # the layer reads its inputs permuted: its weight's columns are in that order
        dense = torch.empty_like(dense).index_copy_(1, converted.order, dense)
    assert torch.equal(dense, ref)
    assert int4.check_layer(converted, ref, None, torch.bfloat16) < 1e-2
    x = torch.randn(3, 5, 256, dtype=torch.bfloat16)
    assert converted(x).shape == (3, 5, 96)


def test_int4_kernel_settings_name_the_kernels():
    from quantstudy.benchmark.settings import INT4_KERNELS

    assert INT4_KERNELS == ("auto", "dense", *int4.KERNELS)


def test_tinygemm_layer_follows_g_idx():
    layer = packed_layer(group=32, symmetric=False, actorder=True)
    w = int4.unpack(layer)
    assert w.g_idx is not None
    ref = reference_with_g_idx(layer)
    torch.testing.assert_close(int4.dequantize(w, ref.dtype), ref, rtol=2**-8, atol=0)
    converted = int4.to_tinygemm(w, None, torch.bfloat16)
    assert converted.order is not None
    assert int4.check_layer(converted, ref, None, torch.bfloat16) < 1e-2
    converted.order = None  # the permutation left out: the layer no longer computes W
    assert int4.check_layer(converted, ref, None, torch.bfloat16) > 0.3


def test_check_layer_catches_a_wrong_zero_point():
    """The check can fail: a layer whose zero points are off by one step is caught."""
    layer = packed_layer(group=32, symmetric=False)
    w = int4.unpack(layer)
    w.zero = (w.zero.to(torch.int16) + 1).clamp(-8, 7).to(torch.int8)
    converted = int4.to_tinygemm(w, None, torch.bfloat16)
    assert int4.check_layer(converted, int4.reference_weight(layer), None, torch.bfloat16) > 0.05


def test_convert_model_replaces_every_packed_layer_and_refuses_a_bad_one(monkeypatch):
    model = torch.nn.Sequential(packed_layer(seed=1), torch.nn.ReLU(), packed_layer(96, 96, seed=2))
    old = model[0]
    record = int4.convert_model(model, "tinygemm")
    assert not list(old.parameters())  # a reference kept elsewhere holds no packed weights
    assert record["layers"] == 2 and record["op"] == "aten._weight_int4pack_mm_for_cpu"
    assert record["max_rel_error"] < 1e-2
    assert not int4.has_layers(model)
    assert all(isinstance(model[i], int4.Int4Linear) for i in (0, 2))

    bad = torch.nn.Sequential(packed_layer(seed=3))
    real = int4.to_tinygemm

    def off_by_one(w, bias, dtype):
        w.q = (w.q.to(torch.int16) + 1).clamp(-8, 7).to(torch.int8)
        return real(w, bias, dtype)

    monkeypatch.setitem(int4.CONVERTERS, "tinygemm", off_by_one)
    with pytest.raises(ValueError, match="0: tinygemm layer is"):
        int4.convert_model(bad, "tinygemm")


def test_kernel_names():
    assert int4.kernel_name("tinygemm", "cuda") == "aten._weight_int4pack_mm (tinygemm)"
    with pytest.raises(ValueError, match="does not run on cpu"):
        int4.kernel_name("gemlite", "cpu")


@needs_cuda
@pytest.mark.parametrize("kernel", ["tinygemm", "gemlite", "compiled"])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("actorder", [False, True])
def test_cuda_int4_layer_matches_the_dense_layer(kernel, symmetric, actorder):
    if kernel == "gemlite" and _gemlite_missing():
        pytest.skip("gemlite is not installed")
    layer = packed_layer(4096, 4096, 128, symmetric, actorder, device="cuda")
    w = int4.unpack(layer)
    ref = reference_with_g_idx(layer) if actorder else int4.reference_weight(layer)
    converted = int4.CONVERTERS[kernel](w, None, torch.bfloat16)
    for batch in (1, 16):
        error = int4.check_layer(converted, ref, None, torch.bfloat16, batch=batch)
        print(f"{kernel} symmetric={symmetric} actorder={actorder} batch={batch}: {error:.3g}")
        assert error < int4.TOLERANCE[kernel]


@pytest.fixture(scope="module")
def gptq_arm(tiny_source, calibration_file, tmp_path_factory):
    """The tiny model's GPTQ arm (bf16, group 32), saved as compressed-tensors packed int4."""
    from quantstudy.arms import parse_arm
    from quantstudy.quantize import quantize_arm

    out = tmp_path_factory.mktemp("int4") / "gptq"
    calib = {"path": str(calibration_file), "num_samples": 4, "seq_len": 32, "seed": 0}
    spec = {"method": "gptq", "group_size": 32, "dtype": "bf16", "calibration": calib}
    quantize_arm(parse_arm("gptq", spec), tiny_source, out, device="cpu")
    return out


def test_benchmark_loads_a_gptq_arm_onto_the_int4_kernel(gptq_arm):
    from quantstudy.benchmark.backend import load_model, low_bit_record
    from quantstudy.benchmark.settings import int4_kernel, resolve_settings

    settings = resolve_settings()
    assert int4_kernel(settings, "cuda") == "tinygemm"
    assert int4_kernel(settings, "cpu") == "dense"  # CPU runs keep transformers' dense path
    with pytest.raises(ValueError, match="int4_kernel"):
        resolve_settings({"int4_kernel": "marlin"})

    cpu = torch.device("cpu")
    dense, _, _ = load_model(gptq_arm, cpu)
    assert low_bit_record(dense, "fp8") is None
    assert low_bit_record(dense, "int4") == {
        "kernel": "dense",
        "op": "dense matmul after compressed-tensors decompression",
    }
    model, _, _ = load_model(gptq_arm, cpu, {"int4": "tinygemm"})
    record = low_bit_record(model, "int4")
    assert record["kernel"] == "tinygemm" and record["layers"] == 14
    assert record["op"] == "aten._weight_int4pack_mm_for_cpu"
    assert sum(isinstance(m, int4.Int4Linear) for m in model.modules()) == 14
    ids = torch.randint(
        0, int(model.config.vocab_size), (2, 12), generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        want, got = dense(input_ids=ids).logits.float(), model(input_ids=ids).logits.float()
    assert float((got - want).norm() / want.norm()) < 2e-2


def test_benchmark_measures_the_int4_kernel_and_the_dense_path(gptq_arm, tiny_source):
    """One job: static mode on tinygemm, dense mode on the same arm as transformers runs it."""
    from quantstudy.benchmark import record as bench_record
    from quantstudy.benchmark.job import run_benchmark

    settings = {"int4_kernel": "tinygemm", **LOW_BIT_BENCH_SETTINGS}
    rec = run_benchmark(gptq_arm, tiny_source, settings, "cpu")
    bench_record.validate(rec)
    assert rec["schema"] == "quant-study/bench/3"
    models = rec["models"]
    assert models["arm"]["int4"]["kernel"] == "tinygemm" and models["arm"]["int4"]["layers"] == 14
    assert models["arm_dense"]["int4"]["kernel"] == "dense"
    assert models["arm_dense"]["layers"] == {"Linear:weight:bfloat16": 15}  # 14 + lm_head
    # the int4 arm holds packed weights, the dense one decompressed bf16: about 4x the bytes
    packed = models["arm"]["footprint"]["buffers_bytes"]
    assert (
        models["arm_dense"]["footprint"]["total_bytes"] > models["arm"]["footprint"]["total_bytes"]
    )
    assert packed > 0
    assert set(rec["modes"]) == {"static", "dense"}
    dense = rec["modes"]["dense"]
    assert dense["supported"] and dense["description"].startswith("int4/FP8 layers decompressed")
    assert dense["decode"]["order"] == "ABAB"  # interleaved with the baseline, as static is
    assert dense["decode"]["arm"]["ms_per_token"]["median"] > 0
    with pytest.raises(ValueError, match="largest_batch.modes"):
        run_benchmark(gptq_arm, tiny_source, {**settings, "largest_batch": {"modes": ["dense"]}})
