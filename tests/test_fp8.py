"""FP8-dynamic arms on an FP8 matmul (quantstudy.fp8): every converted layer against
compressed-tensors' own arithmetic, the model against transformers' path, fusion, the benchmark
job's record, and that Dynamo traces the layer whole (transformers' own FP8 paths do not)."""

from __future__ import annotations

import pytest
import torch

from quantstudy import fp8
from quantstudy.arms import parse_arm
from quantstudy.quantize import quantize_arm

from .conftest import LOW_BIT_BENCH_SETTINGS

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def fp8_arms(tiny_source, tmp_path_factory):
    """The tiny model's FP8-dynamic and FP8 weight-only arms (bf16), as llm-compressor saves them."""
    root = tmp_path_factory.mktemp("fp8")
    out = {}
    for name, method in (("dynamic", "fp8-dynamic"), ("weight", "fp8-weight")):
        out[name] = root / name
        quantize_arm(parse_arm(name, {"method": method, "dtype": "bf16"}), tiny_source, out[name])
    return out


def loaded(directory, device="cpu"):
    from quantstudy.loading import load_arm

    return load_arm(directory, device, check=False, all_logits=False)


def by_hand(x: torch.Tensor, module: torch.nn.Module) -> torch.Tensor:
    """The FP8-dynamic product from its definition, independent of both implementations: each
    row of x scaled by amax/448 and rounded to E4M3, the weight times its per-channel scale."""
    scale = x.float().abs().amax(-1, keepdim=True) / 448.0
    xq = (x.float() / scale).to(torch.float8_e4m3fn).float() * scale
    return xq @ (module.weight.float() * module.weight_scale.float()).T


def test_each_layer_computes_what_compressed_tensors_defines(fp8_arms):
    model = loaded(fp8_arms["dynamic"])
    layers = {n: m for n, m in model.named_modules() if fp8.is_fp8_dynamic(m)}
    assert len(layers) == 14  # 2 layers x 7 projections; lm_head is left in bf16
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    for name, module in layers.items():
        if module.in_features != 64:
            continue
        new = fp8.to_scaled_mm(module, torch.bfloat16)
        assert new.weight.data_ptr() == module.weight.data_ptr()  # the FP8 weight, not a copy
        want = by_hand(x, module)
        assert fp8.relative_error(fp8.reference_output(module, x), want) < 1e-6, name
        assert fp8.relative_error(new(x), want) < 5e-3, name  # bf16 out
        assert fp8.check_layer(new, module, torch.bfloat16) < fp8.TOLERANCE


def test_the_layer_check_catches_a_missing_activation_quantization_or_misplaced_scales(fp8_arms):
    model = loaded(fp8_arms["dynamic"])
    module = model.model.layers[0].mlp.gate_proj
    good = fp8.to_scaled_mm(module, torch.bfloat16)
    assert fp8.check_layer(good, module, torch.bfloat16) < fp8.TOLERANCE

    class NoActivationQuantization(torch.nn.Module):
        def forward(self, x):
            w = module.weight.float() * module.weight_scale.float()
            return (x.float() @ w.T).to(x.dtype)

    assert fp8.check_layer(NoActivationQuantization(), module, torch.bfloat16) > fp8.TOLERANCE
    flipped = fp8.Fp8Linear(module.weight, good.scale.flip(-1), None)
    assert fp8.check_layer(flipped, module, torch.bfloat16) > fp8.TOLERANCE


def test_convert_model_keeps_fp8_weights_and_agrees_with_transformers_path(fp8_arms):
    dense = loaded(fp8_arms["dynamic"])
    model = loaded(fp8_arms["dynamic"])
    assert fp8.has_layers(model)
    record = fp8.convert_model(model, "scaled_mm")
    assert record["layers"] == 14 and record["kernel"] == "scaled_mm"
    assert record["op"] == fp8.KERNEL_NAMES["scaled_mm"]["cpu"]
    assert record["max_rel_error"] < fp8.TOLERANCE and record["compute_dtype"] == "bfloat16"
    assert not fp8.has_layers(model)
    held = [m for m in model.modules() if isinstance(m, fp8.Fp8Linear)]
    assert len(held) == 14 and {m.weight.dtype for m in held} == {torch.float8_e4m3fn}
    ids = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = dense(input_ids=ids).logits.float(), model(input_ids=ids).logits.float()
    # transformers' path rounds the activations twice (to bf16, then E4M3): 2.9% apart here; a
    # misplaced scale or layout puts the logits O(1) apart (the per-layer checks are the tight ones)
    assert float((got - want).norm() / want.norm()) < 5e-2
    with pytest.raises(ValueError, match="unknown FP8 kernel"):
        fp8.convert_model(loaded(fp8_arms["dynamic"]), "marlin")


def test_weight_only_fp8_has_no_fp8_product_and_stays_on_transformers_path(fp8_arms):
    from quantstudy.benchmark.backend import load_model, low_bit_record

    model, _, _ = load_model(fp8_arms["weight"], torch.device("cpu"), {"fp8": "scaled_mm"})
    assert low_bit_record(model, "fp8") is None and low_bit_record(model, "int4") is None
    assert not any(isinstance(m, fp8.Fp8Linear) for m in model.modules())


def test_dynamo_traces_the_fp8_layer_whole(fp8_arms):
    """The point of the layer: a CUDA graph needs the step in one graph, and transformers' FP8
    layers break it (compressed-tensors' QuantizationArgs; torch 2.11's _scaled_mm_v2)."""
    module = loaded(fp8_arms["dynamic"]).model.layers[0].self_attn.q_proj
    layer = fp8.to_scaled_mm(module, torch.bfloat16)
    x = torch.randn(1, 64).to(torch.bfloat16)
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), layer(x), rtol=0, atol=0)


def test_fused_fp8_projections_equal_the_separate_ones(fp8_arms):
    from quantstudy.benchmark.fusion import fuse_projections

    model = loaded(fp8_arms["dynamic"])
    fp8.convert_model(model, "scaled_mm")
    ids = torch.randint(0, 1000, (1, 10), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = model(input_ids=ids).logits.float()
        fusion = fuse_projections(model)
        assert fusion.fused == {"qkv": 2, "gate_up": 2} and fusion.not_fused == {}
        got = model(input_ids=ids).logits.float()
        fusion.undo()
        back = model(input_ids=ids).logits.float()
    assert float((got - want).norm() / want.norm()) < 1e-3
    torch.testing.assert_close(back, want, rtol=0, atol=0)
    q = model.model.layers[0].self_attn.q_proj
    assert q.weight.untyped_storage().nbytes() == q.weight.nbytes  # its own storage again


def test_benchmark_job_records_the_fp8_kernel_and_the_dense_path(fp8_arms, tiny_source):
    from quantstudy.aggregate import collect_benchmarks
    from quantstudy.benchmark import record as bench_record
    from quantstudy.benchmark.job import run_benchmark
    from quantstudy.benchmark.settings import FP8_KERNELS, kernels, resolve_settings

    assert FP8_KERNELS == ("auto", "dense", *fp8.KERNELS)
    assert kernels(resolve_settings(), "cpu") == {"int4": "dense", "fp8": "dense"}
    with pytest.raises(ValueError, match="settings.fp8_kernel"):
        resolve_settings({"fp8_kernel": "marlin"})
    settings = {"fp8_kernel": "scaled_mm", **LOW_BIT_BENCH_SETTINGS}
    rec = run_benchmark(fp8_arms["dynamic"], tiny_source, settings, "cpu")
    bench_record.validate(rec)
    models = rec["models"]
    assert models["arm"]["fp8"]["kernel"] == "scaled_mm" and models["arm"]["fp8"]["layers"] == 14
    assert models["arm"]["int4"] is None
    assert models["arm_dense"]["fp8"]["kernel"] == "dense"
    assert rec["modes"]["static"]["decode"]["batch_size"] == 1
    assert "dense" in rec["modes"]
    path = fp8_arms["dynamic"].parent / "bench.json"
    bench_record.write(path, rec)
    table = collect_benchmarks([path])
    assert set(table.fp8_kernel) == {fp8.KERNEL_NAMES["scaled_mm"]["cpu"]}
    assert table.int4_kernel.isna().all()


@pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9),
    reason="needs a CUDA GPU with FP8 tensor cores",
)
@pytest.mark.parametrize("rows", [1, 16])
def test_cuda_fp8_layer_matches_its_definition_and_compiles_into_a_cuda_graph(rows):
    """cuBLASLt's FP8 GEMM against the definition (a 4096 x 4096 layer, as at 8B), and the layer
    captured whole in a CUDA graph (reduce-overhead)."""
    from quantstudy.benchmark.settings import kernels, resolve_settings

    assert kernels(resolve_settings(), "cuda")["fp8"] == "scaled_mm"
    generator = torch.Generator(device="cuda").manual_seed(0)
    dense = torch.randn(4096, 4096, generator=generator, device="cuda") * 0.02
    scale = dense.abs().amax(1, keepdim=True) / 448.0
    weight = (dense / scale).to(torch.float8_e4m3fn)
    layer = fp8.Fp8Linear(weight, scale, None)
    module = torch.nn.Linear(4096, 4096, bias=False).cuda()  # only for the by-hand product
    module.weight.data, module.weight_scale = weight, scale
    x = torch.randn(rows, 4096, generator=generator, device="cuda").to(torch.bfloat16)
    assert fp8.relative_error(layer(x), by_hand(x, module)) < 5e-3
    step = torch.compile(layer, mode="reduce-overhead", fullgraph=True)
    for _ in range(3):
        got = step(x)
    torch.testing.assert_close(got, layer(x), rtol=0, atol=0)
