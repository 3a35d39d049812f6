"""Every method on a tiny random Llama: stored dtypes and shapes, and reloads that match."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from quantstudy.arms import parse_arm
from quantstudy.memory import footprint
from quantstudy.quantize import linear_names, quantize_arm

HIDDEN, INTER, LAYERS = 64, 128, 2  # tests/data/tiny-llama.json
# (name, in_features, out_features) of every quantized Linear of one layer (lm_head is skipped)
LAYER_LINEARS = {
    "self_attn.q_proj": (HIDDEN, HIDDEN),
    "self_attn.k_proj": (HIDDEN, 32),
    "self_attn.v_proj": (HIDDEN, 32),
    "self_attn.o_proj": (HIDDEN, HIDDEN),
    "mlp.gate_proj": (HIDDEN, INTER),
    "mlp.up_proj": (HIDDEN, INTER),
    "mlp.down_proj": (INTER, HIDDEN),
}
N_QUANTIZED = LAYERS * len(LAYER_LINEARS)


def tensors(directory):
    out = {}
    with safe_open(directory / "model.safetensors", "pt") as f:
        for k in f.keys():
            out[k] = f.get_tensor(k)
    return out


def source_weight(source, name):
    return tensors(source)[f"{name}.weight"].float()


@pytest.fixture(scope="module")
def built(tiny_source, calibration_file, tmp_path_factory):
    """All six kinds of arm, built once for the module."""
    calib = {"path": str(calibration_file), "num_samples": 8, "seq_len": 64, "seed": 0}
    specs = {
        "bf16": {"method": "baseline", "dtype": "bf16"},
        "int8": {"method": "bnb-int8", "dtype": "fp32"},
        "nf4_dq": {
            "method": "bnb-4bit",
            "quant_type": "nf4",
            "double_quant": True,
            "dtype": "fp32",
        },
        "fp4": {
            "method": "bnb-4bit",
            "quant_type": "fp4",
            "compute_dtype": "fp32",
            "dtype": "fp32",
        },
        "gptq": {"method": "gptq", "group_size": 32, "dtype": "fp32", "calibration": calib},
        "awq": {
            "method": "awq",
            "group_size": 32,
            "symmetric": False,
            "dtype": "fp32",
            "calibration": calib,
        },
    }
    root = tmp_path_factory.mktemp("arms")
    out = {}
    for name, spec in specs.items():
        quantize_arm(parse_arm(name, spec), tiny_source, root / name, device="cpu")
        out[name] = root / name
    return out


def record(directory):
    return json.loads((directory / "quantize.json").read_text())


def test_baseline_is_the_source_in_bf16(built, tiny_source):
    t = tensors(built["bf16"])
    w = t["model.layers.0.mlp.up_proj.weight"]
    assert w.dtype == torch.bfloat16 and tuple(w.shape) == (INTER, HIDDEN)
    src = source_weight(tiny_source, "model.layers.0.mlp.up_proj")
    assert torch.equal(w, src.to(torch.bfloat16))
    rec = record(built["bf16"])
    assert rec["verified"]["quantized_modules"] == 0 and rec["bits"] == 16


def test_int8_weights_are_rowwise_int8(built, tiny_source):
    t = tensors(built["int8"])
    name = "model.layers.1.mlp.down_proj"
    w, scb = t[f"{name}.weight"], t[f"{name}.SCB"]
    assert w.dtype == torch.int8 and tuple(w.shape) == (HIDDEN, INTER)
    # LLM.int8 stores row-wise absmax scales: W ~= w * SCB / 127
    src = source_weight(tiny_source, name)
    assert torch.allclose(scb.float(), src.abs().amax(dim=1), rtol=1e-3)
    recon = w.float() * scb.float()[:, None] / 127
    assert (recon - src).abs().max() <= scb.float().max() / 127
    assert record(built["int8"])["verified"]["quantized_modules"] == N_QUANTIZED
    assert "lm_head.weight" in t and t["lm_head.weight"].dtype == torch.float32


@pytest.mark.parametrize(
    "arm, quant_type, nested", [("nf4_dq", "nf4", True), ("fp4", "fp4", False)]
)
def test_4bit_weights_are_packed_and_dequantize_to_the_source(
    built, tiny_source, arm, quant_type, nested
):
    import bitsandbytes.functional as F
    from transformers import AutoModelForCausalLM

    t = tensors(built[arm])
    name = "model.layers.0.mlp.gate_proj"
    packed = t[f"{name}.weight"]
    assert packed.dtype == torch.uint8 and packed.numel() == INTER * HIDDEN // 2
    assert (f"{name}.weight.nested_absmax" in t) == nested
    assert f"{name}.weight.quant_state.bitsandbytes__{quant_type}" in t
    model = AutoModelForCausalLM.from_pretrained(built[arm], device_map="cpu")
    layer = dict(model.named_modules())[name]
    assert type(layer).__name__ == "Linear4bit"
    deq = F.dequantize_4bit(layer.weight.data, layer.weight.quant_state).float()
    src = source_weight(tiny_source, name)
    # 4-bit blockwise (64) absmax quantization: error within one quantization step of the block max
    blocks = src.reshape(-1, 64).abs().amax(dim=1, keepdim=True)
    err = (deq - src).reshape(-1, 64).abs()
    assert (err <= blocks * (0.5 if quant_type == "fp4" else 0.25) + 1e-3).all()
    assert (deq - src).abs().mean() < src.abs().mean()  # far from a random tensor
    n4 = sum(type(m).__name__ == "Linear4bit" for m in model.modules())
    assert n4 == N_QUANTIZED == record(built[arm])["verified"]["quantized_modules"]


@pytest.mark.parametrize("arm", ["gptq", "awq"])
def test_llmcompressor_arms_store_packed_int4(built, tiny_source, arm):
    t = tensors(built[arm])
    for layer in range(LAYERS):
        for short, (fin, fout) in LAYER_LINEARS.items():
            name = f"model.layers.{layer}.{short}"
            assert t[f"{name}.weight_packed"].dtype == torch.int32
            assert tuple(t[f"{name}.weight_packed"].shape) == (fout, fin * 4 // 32)
            assert tuple(t[f"{name}.weight_scale"].shape) == (fout, fin // 32)
            assert (f"{name}.weight_zero_point" in t) == (arm == "awq")
            assert f"{name}.weight" not in t
    config = json.loads((built[arm] / "config.json").read_text())
    q = config["quantization_config"]
    assert q["quant_method"] == "compressed-tensors"
    weights = q["config_groups"]["group_0"]["weights"]
    assert (weights["num_bits"], weights["group_size"]) == (4, 32)
    assert weights["symmetric"] == (arm == "gptq")
    assert "lm_head" in q["ignore"]
    assert (built[arm] / "recipe.yaml").exists()


@pytest.mark.parametrize("arm", ["gptq", "awq"])
def test_llmcompressor_reload_is_the_grid_the_files_hold(built, tiny_source, arm):
    """Reloaded weights are exactly scale * (q - zero) of the stored int4 values, near the source."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(built[arm], device_map="cpu")
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3]]))  # compressed-tensors decompresses on the first forward
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32

    name = "model.layers.1.self_attn.o_proj"
    fin, fout = LAYER_LINEARS["self_attn.o_proj"]
    w = dict(model.named_modules())[name].weight.float()
    t = tensors(built[arm])
    q = unpack_from_int32(t[f"{name}.weight_packed"], 4, torch.Size([fout, fin])).float()
    assert q.min() >= -8 and q.max() <= 7, "values outside the int4 range"
    scale = t[f"{name}.weight_scale"].float().repeat_interleave(32, dim=1)
    zero = torch.zeros_like(q)
    if arm == "awq":
        zp = unpack_from_int32(t[f"{name}.weight_zero_point"], 4, torch.Size([fout, fin // 32]), 0)
        zero = zp.float().repeat_interleave(32, dim=1)
    assert torch.allclose(w, scale * (q - zero), atol=1e-6), (
        "reloaded weights are not the stored grid"
    )
    src = source_weight(tiny_source, name)
    rel = (w - src).norm() / src.norm()
    assert rel < 0.25, f"{arm} weights are {rel:.2f} (relative) away from the source"


def test_reloaded_outputs_match_the_saved_model(built):
    for name, directory in built.items():
        rec = record(directory)
        assert rec["reload_probe_rel_diff"] <= 1e-2, name
        assert set(rec["sha256"]) == {"model.safetensors"}
        assert all(len(h) == 64 for h in rec["sha256"].values())
        assert rec["disk_bytes"] == (directory / "model.safetensors").stat().st_size


@pytest.mark.parametrize("arm", ["gptq", "awq"])
def test_compression_check_covers_every_quantized_layer(built, arm):
    check = record(built[arm])["compression_check"]
    assert check["layers"] == N_QUANTIZED
    assert check["problems"] == []
    # on CPU the compressor and the forward pass round identically (on CUDA AWQ's differ by one
    # step on under 1% of the elements; see quantize.compression_check)
    assert check["max_steps"] == 0.0
    assert check["fraction_differing"] == 0.0


def test_check_saved_finds_a_tampered_file(tiny_source, calibration_file, tmp_path):
    """A packed weight changed on disk after the save is reported, and so is a changed norm."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer

    from quantstudy.quantize import check_saved, compression_check, quantize_llmcompressor

    calib = {"path": str(calibration_file), "num_samples": 4, "seq_len": 32, "seed": 0}
    arm = parse_arm(
        "g", {"method": "gptq", "group_size": 32, "dtype": "fp32", "calibration": calib}
    )
    model = quantize_llmcompressor(arm, tiny_source, "cpu")
    check, digests = compression_check(model)
    assert check["problems"] == [] and len(digests) == N_QUANTIZED
    model.save_pretrained(tmp_path, save_compressed=True)
    AutoTokenizer.from_pretrained(tiny_source).save_pretrained(tmp_path)
    clean = dict(check, problems=[])
    check_saved(model, tmp_path, clean, digests)
    assert clean["problems"] == []

    file = tmp_path / "model.safetensors"
    tensors = load_file(file)
    packed = "model.layers.0.mlp.down_proj.weight_packed"
    tensors[packed] = tensors[packed] ^ 1  # flip the lowest bit of every word
    norm = "model.layers.1.input_layernorm.weight"
    tensors[norm] = tensors[norm] * 2
    save_file(tensors, file, metadata={"format": "pt"})
    tampered = dict(check, problems=[])
    check_saved(model, tmp_path, tampered, digests)
    assert tampered["problems"] == [
        f"{packed} differs from the compressed weight",
        f"saved tensors differ from memory: ['{norm}']",
    ]


def test_memory_accounting(built, tiny_source):
    from transformers import AutoModelForCausalLM

    src = AutoModelForCausalLM.from_pretrained(tiny_source, device_map="cpu")
    assert footprint(src)["total"] == sum(p.numel() * 4 for p in src.parameters()) + sum(
        b.numel() * b.element_size() for b in src.buffers()
    )
    mem = {n: record(d)["memory_bytes"] for n, d in built.items()}
    # packed 4-bit linears: half a byte per weight, plus absmax per 64-block in quant states
    n_linear = sum(fin * fout for fin, fout in LAYER_LINEARS.values()) * LAYERS
    dense = mem["nf4_dq"]["parameters"] - n_linear // 2
    assert dense == mem["fp4"]["parameters"] - n_linear // 2
    # without double quant: one fp32 absmax per 64-block plus a 16-entry fp32 code per layer
    assert mem["fp4"]["quant_state"] == n_linear // 64 * 4 + N_QUANTIZED * 16 * 4
    # with it the block absmaxes are uint8 (one byte per block), plus the nested state per layer
    model = AutoModelForCausalLM.from_pretrained(built["nf4_dq"], device_map="cpu")
    states = [m.weight.quant_state for m in model.modules() if type(m).__name__ == "Linear4bit"]
    assert {s.absmax.dtype for s in states} == {torch.uint8}
    assert sum(s.absmax.numel() for s in states) == n_linear // 64
    assert len(linear_names(src)) == N_QUANTIZED + 1
    # int8 holds one fp32 scale per output row (SCB) beside its int8 weights
    rows = sum(fout for _, fout in LAYER_LINEARS.values()) * LAYERS
    assert mem["int8"]["quant_state"] == rows * 4
    assert mem["int8"]["parameters"] == dense + n_linear


@pytest.fixture(scope="module")
def schemes_built(tiny_source, calibration_file, tmp_path_factory):
    """llm-compressor's FP8 and INT8 W8A8 schemes, built on the CPU (fp32 source)."""
    calib = {"path": str(calibration_file), "num_samples": 4, "seq_len": 32, "seed": 0}
    specs = {
        "fp8_dynamic": {"method": "fp8-dynamic", "dtype": "fp32"},
        "fp8_weight": {"method": "fp8-weight", "dtype": "fp32"},
        "w8a8": {"method": "w8a8", "dtype": "fp32", "calibration": calib},
    }
    root = tmp_path_factory.mktemp("schemes")
    for name, spec in specs.items():
        quantize_arm(parse_arm(name, spec), tiny_source, root / name, device="cpu")
    return {name: root / name for name in specs}


@pytest.mark.parametrize(
    "arm, dtype, activations",
    [("fp8_dynamic", "F8_E4M3", "float"), ("fp8_weight", "F8_E4M3", None), ("w8a8", "I8", "int")],
)
def test_fp8_and_w8a8_arms_store_their_scheme(schemes_built, tiny_source, arm, dtype, activations):
    directory = schemes_built[arm]
    rec = record(directory)
    assert rec["bits"] == 8 and rec["verified"]["quantized_modules"] == N_QUANTIZED
    # every stored FP8/INT8 weight checked against memory and found in the file (on the CPU the
    # two round alike: no step apart)
    check = rec["compression_check"]
    assert (check["layers"], check["problems"], check["max_steps"]) == (N_QUANTIZED, [], 0.0)
    assert rec["verified"]["weight_dtypes"] == [dtype]
    groups = json.loads((directory / "config.json").read_text())["quantization_config"]
    (group,) = groups["config_groups"].values()
    act = group["input_activations"]
    assert (act and (act["type"], act["dynamic"], act["strategy"])) == (
        activations and (activations, True, "token")
    )
    stored = tensors(directory)
    name = "model.layers.0.mlp.down_proj"
    assert (
        str(stored[f"{name}.weight"].dtype)
        == {"F8_E4M3": "torch.float8_e4m3fn", "I8": "torch.int8"}[dtype]
    )
    if arm != "w8a8":  # SmoothQuant folds scales into the weights: only FP8 keeps the source's
        weight = stored[f"{name}.weight"].float() * stored[f"{name}.weight_scale"].float()
        source = source_weight(tiny_source, name)
        assert float((weight - source).norm() / source.norm()) < 0.05  # E4M3: 3 mantissa bits


def test_fp8_and_w8a8_arms_run_on_the_cpu(schemes_built, tiny_source):
    """The demo's accuracy side: each arm loads and runs a forward on the CPU, near the source."""
    from quantstudy.loading import load_arm

    ids = torch.randint(0, 1000, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = load_arm(tiny_source, "cpu", check=False)(input_ids=ids).logits
        for directory in schemes_built.values():
            got = load_arm(directory, "cpu")(input_ids=ids).logits
            assert float((got - want).norm() / want.norm()) < 0.1


def test_verify_arm_refuses_a_scheme_the_files_do_not_hold(schemes_built, tiny_source):
    from transformers import AutoModelForCausalLM

    from quantstudy.loading import load_arm
    from quantstudy.quantize import verify_arm

    directory = schemes_built["fp8_dynamic"]
    linears = linear_names(AutoModelForCausalLM.from_pretrained(tiny_source, device_map="meta"))
    model = load_arm(directory, "cpu")
    verify_arm(parse_arm("a", {"method": "fp8-dynamic"}), model, directory, linears)
    with pytest.raises(AssertionError, match="quantizes activations"):
        verify_arm(parse_arm("a", {"method": "fp8-weight"}), model, directory, linears)
    with pytest.raises(AssertionError, match="not I8"):
        verify_arm(parse_arm("a", {"method": "w8a8"}), model, directory, linears)


def test_grid_steps_count_fp8_steps_on_the_e4m3_grid_and_integer_steps_in_scales():
    from compressed_tensors.quantization import QuantizationArgs

    from quantstudy.fp8 import enum_value
    from quantstudy.quantize import _grid_steps

    fp8_args = QuantizationArgs(num_bits=8, type="float", strategy="channel", symmetric=True)
    int_args = QuantizationArgs(num_bits=4, type="int", strategy="group", group_size=2)
    # the kind compression_check reads from a layer's weight arguments
    assert (enum_value(fp8_args.type), enum_value(int_args.type)) == ("float", "int")
    scale = torch.tensor([[0.5]])
    # neighbours on the E4M3 grid: 288 -> 320 (spacing 32), 1.0 -> 1.125, 2^-8 -> 2^-8 + 2^-9
    memory = torch.tensor([[288.0, 1.0, 2.0**-8, 3.0]]) * 0.5
    loaded = torch.tensor([[320.0, 1.125, 2.0**-8 + 2.0**-9, 3.0]]) * 0.5
    torch.testing.assert_close(
        _grid_steps(loaded, memory, scale, "float"), torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    )
    torch.testing.assert_close(
        _grid_steps(loaded, memory, scale, "int"), torch.tensor([[32.0, 0.125, 2.0**-9, 0.0]])
    )
