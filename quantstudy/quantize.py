"""Build one arm from the prepared source model, save it, reload it and check it is what it claims.

One function per method; every call into llm-compressor goes through `_llmcompressor_oneshot`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import random
import time
from pathlib import Path
from typing import Any

import torch

from .arms import (
    COMPRESSED_TENSORS_ARMS,
    Arm,
    BaselineArm,
    Bnb4bitArm,
    BnbInt8Arm,
    Fp8Arm,
    GgufArm,
    LlmCompressorArm,
    W8A8Arm,
    torch_dtype,
)
from .calibration import read_calibration_file, usable_texts
from .device import device_record
from .fp8 import enum_value
from .loading import bnb_cpu_record, is_repacked, load_arm, set_bnb_cpu_path
from .memory import footprint
from .provenance import (
    SOURCE_RECORD,
    check_weights,
    code_version,
    dir_weight_files,
    disk_bytes,
    package_versions,
    sha256_files,
    write_json,
)

log = logging.getLogger(__name__)

# Tokens of the fixed probe that checks a reloaded arm against the model that was saved.
PROBE_TEXT = "The capital of France is Paris. The capital of Italy is"


def default_device() -> str:
    """cuda when a GPU is visible, else cpu."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def linear_names(model: torch.nn.Module) -> list[str]:
    """Names of the nn.Linear modules, as quantizers see them."""
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]


def _skipped(name: str, skip: tuple[str, ...]) -> bool:
    return any(name == s or name.endswith("." + s) or name.split(".")[-1] == s for s in skip)


def relative_max_diff(after: torch.Tensor, before: torch.Tensor) -> float:
    """How far the probe's logits moved: the largest absolute change over the largest logit."""
    return float((after - before).abs().max() / before.abs().max().clamp_min(1e-6))


@torch.inference_mode()
def probe_logits(model, tokenizer) -> torch.Tensor:
    """Last-position logits of the fixed probe text, as float32 on the CPU."""
    device = next(model.parameters()).device
    ids = tokenizer(PROBE_TEXT, return_tensors="pt").input_ids.to(device)
    return model(ids).logits[0, -1].float().cpu()


# --- methods -----------------------------------------------------------------------------


def quantize_baseline(arm: BaselineArm, source: Path, device: str):
    """The source weights in the arm's dtype."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(source, dtype=arm.torch_dtype, device_map=device)


def bnb_config(arm: BnbInt8Arm | Bnb4bitArm):
    """The transformers BitsAndBytesConfig for a bitsandbytes arm."""
    from transformers import BitsAndBytesConfig

    if isinstance(arm, BnbInt8Arm):
        return BitsAndBytesConfig(
            load_in_8bit=True,
            llm_int8_threshold=arm.threshold,
            llm_int8_skip_modules=list(arm.skip_modules),
        )
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=arm.quant_type,
        bnb_4bit_use_double_quant=arm.double_quant,
        bnb_4bit_compute_dtype=torch_dtype(arm.compute_dtype),
        bnb_4bit_quant_storage=torch_dtype(arm.quant_storage),
        llm_int8_skip_modules=list(arm.skip_modules),
    )


def quantize_bnb(arm: BnbInt8Arm | Bnb4bitArm, source: Path, device: str):
    """LLM.int8 or NF4/FP4: bitsandbytes quantizes the weights while loading them."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        source, dtype=arm.torch_dtype, quantization_config=bnb_config(arm), device_map=device
    )


def calibration_texts(
    arm: LlmCompressorArm | W8A8Arm | GgufArm, root: Path | str = "."
) -> list[str]:
    """The calibration samples: `num_samples` non-empty texts chosen with the arm's seed."""
    calib = arm.calibration
    if calib.path:
        path = Path(calib.path)
        path = path if path.is_absolute() else Path(root) / path
        texts = read_calibration_file(path, calib.text_field)
    else:
        import datasets

        ds = datasets.load_dataset(calib.dataset, calib.config_name, split=calib.split)
        texts = usable_texts(str(t) for t in ds[calib.text_field])
    if not texts:
        raise ValueError(f"arms.{arm.name}.calibration: no non-empty text found")
    rng = random.Random(calib.seed)
    rng.shuffle(texts)
    return texts[: calib.num_samples]


def _no_pinning_without_accelerator():
    """llm-compressor 0.14 pins cached activations, which fails where no accelerator exists.

    Pinning only speeds host-to-device copies, so without a GPU it is skipped; with one, nothing
    changes.
    """
    if torch.cuda.is_available():
        return contextlib.nullcontext()
    from unittest import mock

    from llmcompressor.pipelines.cache import IntermediatesCache

    return mock.patch.object(
        IntermediatesCache, "_pin_intermediate", classmethod(lambda c, v: None)
    )


def _llmcompressor_recipe(arm: Fp8Arm | W8A8Arm) -> list:
    """llm-compressor's modifiers for the FP8 and INT8 W8A8 arms."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from llmcompressor.modifiers.gptq import GPTQModifier
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from llmcompressor.modifiers.transform.smoothquant import SmoothQuantModifier

    ignore = list(arm.ignore)
    if isinstance(arm, W8A8Arm):
        return [
            SmoothQuantModifier(smoothing_strength=arm.smoothing_strength),
            GPTQModifier(
                targets="Linear", scheme="W8A8", ignore=ignore, dampening_frac=arm.dampening_frac
            ),
        ]
    if arm.method == "fp8-dynamic":
        return [QuantizationModifier(targets="Linear", scheme="FP8_DYNAMIC", ignore=ignore)]
    fp8 = QuantizationArgs(num_bits=8, type="float", strategy="channel", symmetric=True)
    scheme = QuantizationScheme(targets=["Linear"], weights=fp8)
    return [QuantizationModifier(config_groups={"group_0": scheme}, ignore=ignore)]


def _llmcompressor_oneshot(
    model, tokenizer, arm: LlmCompressorArm | Fp8Arm | W8A8Arm, texts: list[str]
) -> None:
    """The one place that decides how llm-compressor runs, in place: GPTQ or AWQ
    (+ round-to-group), FP8 (data-free: no texts) or SmoothQuant + GPTQ for W8A8; the calibrated
    ones through `_calibrated_oneshot`."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from llmcompressor import oneshot
    from llmcompressor.modifiers.gptq import GPTQModifier
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from llmcompressor.modifiers.transform.awq import AWQModifier

    if isinstance(arm, Fp8Arm):
        with _no_pinning_without_accelerator():
            oneshot(model=model, recipe=_llmcompressor_recipe(arm))
        return
    if isinstance(arm, W8A8Arm):
        _calibrated_oneshot(model, tokenizer, _llmcompressor_recipe(arm), texts, arm.calibration)
        return
    scheme = QuantizationScheme(
        targets=["Linear"],
        weights=QuantizationArgs(
            num_bits=arm.bits,
            type="int",
            symmetric=arm.symmetric,
            strategy="group",
            group_size=arm.group_size,
        ),
    )
    groups = {"group_0": scheme}
    if arm.method == "gptq":
        recipe = [
            GPTQModifier(
                config_groups=groups, ignore=list(arm.ignore), dampening_frac=arm.dampening_frac
            )
        ]
    else:
        recipe = [
            AWQModifier(),
            QuantizationModifier(config_groups=groups, ignore=list(arm.ignore)),
        ]
    _calibrated_oneshot(model, tokenizer, recipe, texts, arm.calibration)


def _calibrated_oneshot(model, tokenizer, recipe, texts: list[str], calibration) -> None:
    """llm-compressor's oneshot over the calibration texts, each cut to `calibration.seq_len`
    tokens, in the order given."""
    from datasets import Dataset
    from llmcompressor import oneshot

    seq_len = calibration.seq_len
    encoded = tokenizer(texts, truncation=True, max_length=seq_len, add_special_tokens=False)
    dataset = Dataset.from_dict(
        {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
    )
    with _no_pinning_without_accelerator():
        oneshot(
            model=model,
            tokenizer=tokenizer,
            dataset=dataset,
            recipe=recipe,
            max_seq_length=seq_len,
            num_calibration_samples=len(texts),
            shuffle_calibration_samples=False,
        )


def quantize_llmcompressor(
    arm: LlmCompressorArm | Fp8Arm | W8A8Arm, source: Path, device: str, root: Path | str = "."
):
    """GPTQ, AWQ or W8A8 with calibration data, or FP8 without, by llm-compressor."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    calibration = getattr(arm, "calibration", None)
    torch.manual_seed(calibration.seed if calibration is not None else 0)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=arm.torch_dtype, device_map=device)
    tokenizer = AutoTokenizer.from_pretrained(source)
    texts = calibration_texts(arm, root) if calibration is not None else []
    _llmcompressor_oneshot(model, tokenizer, arm, texts)
    return model


# --- verification --------------------------------------------------------------------------

# A compressed-tensors arm may differ from the model oneshot left in memory on this share of
# weights, by at most one quantization step each (see compression_check). Integers: measured
# 0.74% for AWQ on the H100. FP8: memory rounds w/s to bf16 first (8 significant bits), then to
# E4M3 (4): the 1/16 of bf16 values that land exactly halfway between two E4M3 neighbours may go
# either way, so at most 2^-4 of the weights; measured 3.02% for an 8B FP8 arm on the H200.
TIE_FRACTION = {"int": 0.01, "float": 2.0**-4}
# One step, with room for the rounding of both dequantized weights to bf16 (measured: 1.04).
MAX_STEPS = 1.1


@torch.no_grad()
def _compressor(module, scheme):
    """compressed-tensors' compressor for a layer (the one `save_pretrained` uses: the scheme's
    format, else the one compressed-tensors infers) and the name it stores the weight under."""
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.compressors.format import infer_module_format

    fmt = scheme.format or infer_module_format(type(module), scheme)
    fmt = str(getattr(fmt, "value", fmt))
    compressor = BaseCompressor.get_value_from_registry(fmt)
    return compressor, "weight_packed" if fmt == "pack-quantized" else "weight"


def _grid_steps(
    loaded: torch.Tensor, memory: torch.Tensor, scale: torch.Tensor, kind: str
) -> torch.Tensor:
    """|loaded - memory| in quantization steps of a weight `kind` ("int" or "float"): units of the
    scale for integers; for FP8 E4M3 the spacing of the grid at the in-memory value
    (2^(exponent - 3), subnormals 2^-9)."""
    diff = (loaded.float() - memory.float()).abs() / scale
    if kind != "float":
        return diff
    exponent = torch.floor(torch.log2((memory.float() / scale).abs().clamp_min(2.0**-6)))
    return diff / torch.exp2(exponent - 3)


def compression_check(model) -> tuple[dict[str, Any], dict[str, str]]:
    """Compress every quantized weight as `save_pretrained` will, before it does, and compare.

    The in-memory model (after `oneshot`) runs fake-quantized weights; `save_pretrained`
    quantizes the same weights again with the same scales and zero points and stores them (packed
    int4 in place; FP8 and INT8 as they are: afterwards the model holds only the stored form). On
    CUDA the two bf16 computations round a few values that lie near a rounding boundary to
    neighbouring levels (measured on the H100: 0.74% of the elements of every layer, one step
    each, for AWQ's asymmetric round-to-nearest; none for GPTQ, whose weights already lie on the
    grid; none on CPU). Such differences are rounding ties, not a defect, but they move the logits
    of the reload probe (on random-weight models a great deal). This check tells the two apart,
    layer by layer: the stored weight, decompressed as a loader does, must be within one step of
    the in-memory one (on the FP8 grid for FP8 weights), and at most TIE_FRACTION of the elements
    may differ. It returns that record and the SHA-256 of each stored weight, which `check_saved`
    then finds in the files written.
    """
    from compressed_tensors.quantization.lifecycle.forward import forward_quantize

    worst_steps = 0.0
    differing: dict[str, int] = dict.fromkeys(TIE_FRACTION, 0)
    elements = dict(differing)
    digests: dict[str, str] = {}
    for name, module in model.named_modules():
        scheme = getattr(module, "quantization_scheme", None)
        if scheme is None or scheme.weights is None:
            continue
        compressor, stored = _compressor(module, scheme)
        if not compressor.can_compress(type(module), scheme):
            continue
        weight = module.weight
        state = {"weight": weight, "weight_scale": module.weight_scale}
        if getattr(module, "weight_zero_point", None) is not None:
            state["weight_zero_point"] = module.weight_zero_point
        state = {k: v.to(module.weight_scale.device) for k, v in state.items()}
        compressed = compressor.compress(dict(state), scheme)
        digests[name] = hashlib.sha256(_bytes(compressed[stored])).hexdigest()
        loaded = compressor.decompress(compressed, scheme)["weight"]
        memory = forward_quantize(module, state["weight"], "weight", scheme.weights)
        scale = state["weight_scale"].float()
        scale = scale.repeat_interleave(weight.shape[-1] // scale.shape[-1], dim=-1)
        kind = "float" if enum_value(scheme.weights.type) == "float" else "int"
        steps = _grid_steps(loaded, memory, scale, kind)
        worst_steps = max(worst_steps, float(steps.max()))
        differing[kind] += int((steps > 1e-3).sum())
        elements[kind] += steps.numel()
    total = sum(elements.values())
    record: dict[str, Any] = {
        "layers": len(digests),
        "max_steps": worst_steps,
        "fraction_differing": sum(differing.values()) / total if total else 0.0,
        "problems": [],
    }
    if worst_steps > MAX_STEPS:
        record["problems"].append(f"a stored weight is {worst_steps:.2f} steps from memory")
    for kind, limit in TIE_FRACTION.items():
        if elements[kind] and differing[kind] / elements[kind] > limit:
            share = differing[kind] / elements[kind]
            record["problems"].append(
                f"{share:.2%} of the {kind} weights differ (at most {limit:.2%})"
            )
    return record, {f"{name}.{stored}": d for name, d in digests.items()}


def _bytes(tensor: torch.Tensor) -> bytes:
    """A tensor's raw bytes (FP8 has no numpy dtype: viewed as bytes)."""
    return tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()


def check_saved(model, directory: Path, record: dict[str, Any], digests: dict[str, str]) -> None:
    """The files written hold the packed weights `compression_check` compared, and every other
    tensor as the model holds it; problems are added to `record`."""
    from safetensors import safe_open

    handles = {}
    for file in sorted(directory.glob("*.safetensors")):
        handle = safe_open(file, framework="pt")
        handles.update(dict.fromkeys(handle.keys(), handle))
    for key, digest in digests.items():
        if key not in handles:
            record["problems"].append(f"{key} was not saved")
            continue
        if hashlib.sha256(_bytes(handles[key].get_tensor(key))).hexdigest() != digest:
            record["problems"].append(f"{key} differs from the compressed weight")
    layers = {key.rsplit(".", 1)[0] for key in digests}
    unequal = [
        n
        for n, p in model.state_dict().items()
        if n.rsplit(".", 1)[0] not in layers
        and n in handles
        and not torch.equal(handles[n].get_tensor(n), p.detach().cpu())
    ]
    if unequal:
        record["problems"].append(f"saved tensors differ from memory: {unequal[:5]}")


def _safetensors_dtypes(directory: Path) -> dict[str, tuple[str, list[int]]]:
    from safetensors import safe_open

    out = {}
    for f in dir_weight_files(directory):
        if f.suffix != ".safetensors":
            continue
        with safe_open(f, "pt") as st:
            for key in st.keys():
                sl = st.get_slice(key)
                out[key] = (sl.get_dtype(), list(sl.get_shape()))
    return out


def verify_arm(arm: Arm, model, directory: Path, source_linears: list[str]) -> dict[str, Any]:
    """Check that the reloaded arm really is what it claims; raise AssertionError when not.

    Returns the facts checked (module counts, stored dtypes), for quantize.json.
    """
    config = json.loads((directory / "config.json").read_text())
    qconf = config.get("quantization_config")
    stored = _safetensors_dtypes(directory)
    expected = [n for n in source_linears if not _skipped(n, getattr(arm, "skip_modules", ()))]
    facts: dict[str, Any] = {"linear_modules": len(source_linears)}
    if isinstance(arm, BaselineArm):
        assert qconf is None, "a baseline arm must not carry a quantization_config"
        float_dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
        assert float_dtypes == {arm.torch_dtype}, f"parameters are {float_dtypes}, not {arm.dtype}"
        facts["quantized_modules"] = 0
    elif isinstance(arm, (BnbInt8Arm, Bnb4bitArm)):
        import bitsandbytes as bnb

        cls = bnb.nn.Linear8bitLt if isinstance(arm, BnbInt8Arm) else bnb.nn.Linear4bit
        found = [n for n, m in model.named_modules() if isinstance(m, cls)]
        assert sorted(found) == sorted(expected), (
            f"{len(found)} {cls.__name__} modules after reload, expected {len(expected)}"
        )
        assert qconf and qconf.get("quant_method") == "bitsandbytes", "quantization_config missing"
        weights = {stored[f"{n}.weight"][0] for n in found}
        if isinstance(arm, BnbInt8Arm):
            assert qconf.get("load_in_8bit"), "config.json does not say load_in_8bit"
            assert weights == {"I8"}, f"int8 weights stored as {weights}"
        else:
            assert qconf.get("load_in_4bit"), "config.json does not say load_in_4bit"
            assert qconf.get("bnb_4bit_quant_type") == arm.quant_type
            assert bool(qconf.get("bnb_4bit_use_double_quant")) == arm.double_quant
            nested_saved = {f"{n}.weight.nested_absmax" in stored for n in found}
            assert nested_saved == {arm.double_quant}, "double quant not saved as configured"
            modules = [dict(model.named_modules())[n] for n in found]
            repacked = [n for n, m in zip(found, modules) if is_repacked(m)]
            assert not repacked, (
                f"{len(repacked)} 4-bit layers were repacked by a forward (e.g. {repacked[0]}): "
                "verification reads their state as loaded, before any forward"
            )
            states = [m.weight.quant_state for m in modules]
            assert {s.quant_type for s in states} == {arm.quant_type}
            assert {s.nested for s in states} == {arm.double_quant}, "double quant not applied"
            computes = {m.compute_dtype for m in modules}
            assert computes == {torch_dtype(arm.compute_dtype)}, f"compute dtype is {computes}"
            storage = {"uint8": "U8", "bf16": "BF16", "fp16": "F16", "fp32": "F32"}[
                arm.quant_storage
            ]
            assert weights == {storage}, f"4-bit weights stored as {weights}"
            facts["quant_state_keys"] = sorted(
                {k.split(".weight.")[-1] for k in stored if ".weight." in k}
            )
        facts["quantized_modules"] = len(found)
        facts["weight_dtypes"] = sorted(weights)
    elif isinstance(arm, (Fp8Arm, W8A8Arm)):
        assert qconf and qconf.get("quant_method") == "compressed-tensors", (
            "config.json has no compressed-tensors quantization_config"
        )
        expected = [n for n in source_linears if not _skipped(n, arm.ignore)]
        want = "F8_E4M3" if isinstance(arm, Fp8Arm) else "I8"
        found = sorted(n[: -len(".weight_scale")] for n in stored if n.endswith(".weight_scale"))
        assert found == sorted(expected), f"{len(found)} quantized layers, expected {len(expected)}"
        weights = {stored[f"{n}.weight"][0] for n in found}
        assert weights == {want}, f"weights stored as {weights}, not {want}"
        groups = qconf.get("config_groups", {})
        activations = [g.get("input_activations") for g in groups.values()]
        if arm.method == "fp8-weight":
            assert activations == [None], f"fp8-weight quantizes activations: {activations}"
        else:
            kind = "float" if isinstance(arm, Fp8Arm) else "int"
            assert all(a and a["dynamic"] and a["type"] == kind for a in activations), (
                f"activations are not dynamic {kind}8: {activations}"
            )
        facts["quantized_modules"] = len(found)
        facts["weight_dtypes"] = sorted(weights)
    else:
        assert qconf and qconf.get("quant_method") == "compressed-tensors", (
            "config.json has no compressed-tensors quantization_config"
        )
        expected = [n for n in source_linears if not _skipped(n, arm.ignore)]
        packed = sorted(k[: -len(".weight_packed")] for k in stored if k.endswith(".weight_packed"))
        assert packed == sorted(expected), f"{len(packed)} packed layers, expected {len(expected)}"
        for name in packed:
            dtype, shape = stored[f"{name}.weight_packed"]
            scale_shape = stored[f"{name}.weight_scale"][1]
            out_f, in_f = _weight_shape(directory, name)
            assert dtype == "I32", f"{name}.weight_packed is {dtype}, not int32"
            assert shape == [out_f, in_f * arm.bits // 32], f"{name}.weight_packed shape {shape}"
            assert scale_shape == [out_f, in_f // arm.group_size], (
                f"{name}.weight_scale {scale_shape}"
            )
            if not arm.symmetric:
                assert f"{name}.weight_zero_point" in stored, f"{name} has no zero point"
        groups = qconf.get("config_groups", {})
        bits = {g["weights"]["num_bits"] for g in groups.values()}
        assert bits == {arm.bits}, f"config.json says {bits} bits"
        facts["quantized_modules"] = len(packed)
        facts["weight_dtypes"] = [f"I32 (packed int{arm.bits})"]
    return facts


def _weight_shape(directory: Path, name: str) -> tuple[int, int]:
    from safetensors import safe_open

    for f in dir_weight_files(directory):
        with safe_open(f, "pt") as st:
            if f"{name}.weight_shape" in st.keys():
                shape = st.get_tensor(f"{name}.weight_shape").tolist()
                return int(shape[0]), int(shape[1])
    raise KeyError(f"{name}.weight_shape")


# --- the rule --------------------------------------------------------------------------------

QUANTIZERS = {
    "baseline": quantize_baseline,
    "bnb-int8": quantize_bnb,
    "bnb-4bit": quantize_bnb,
}


def quantize_arm(
    arm: Arm,
    source: Path | str,
    out_dir: Path | str,
    device: str | None = None,
    root: Path | str = ".",
    probe_tolerance: float = 1e-2,
    bnb_cpu_packed: bool = False,
) -> dict[str, Any]:
    """Build, save, reload and verify one arm; write and return its quantize.json record.

    The source's weight files are first checked against its source.json (WeightsChanged, before
    anything is built or written, when they differ). The reloaded arm is verified from its state
    as loaded, before any forward runs on it (a forward may repack bitsandbytes' 4-bit weights,
    see quantstudy.loading); then a fixed probe compares its logits with the model that was
    saved. `bnb_cpu_packed` lets bitsandbytes' fused AVX512-BF16 CPU path run (both models then
    compute in bf16); the workflow leaves it off.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source, out_dir = Path(source), Path(out_dir)
    source_sha256 = check_weights(source, record=SOURCE_RECORD)
    if isinstance(arm, GgufArm):
        return quantize_gguf(arm, source, out_dir, source_sha256, root)
    device = device or default_device()
    tokenizer = AutoTokenizer.from_pretrained(source)
    start = time.perf_counter()
    if isinstance(arm, COMPRESSED_TENSORS_ARMS):
        model = quantize_llmcompressor(arm, source, device, root)
    else:
        model = QUANTIZERS[arm.method](arm, source, device)
    seconds = time.perf_counter() - start
    model.eval()
    set_bnb_cpu_path(model, bnb_cpu_packed)
    out_dir.mkdir(parents=True, exist_ok=True)
    saved_check = None
    if isinstance(arm, COMPRESSED_TENSORS_ARMS):
        # save_pretrained packs compressed-tensors weights in place: probe and check before it
        before = probe_logits(model, tokenizer)
        saved_check, digests = compression_check(model)
        model.save_pretrained(out_dir, save_compressed=True)
        if saved_check is not None:
            check_saved(model, out_dir, saved_check, digests)
    else:
        # a forward may repack 4-bit weights, and saving after it would re-quantize their
        # absmax: save what was quantized first, then probe
        model.save_pretrained(out_dir)
        before = probe_logits(model, tokenizer)
    tokenizer.save_pretrained(out_dir)
    del model
    source_linears = linear_names(AutoModelForCausalLM.from_pretrained(source, device_map="meta"))
    # the files were just written and are hashed into the record below; a quantize.json of an
    # earlier build of out_dir must not be checked against them
    reloaded = load_arm(out_dir, device, packed=bnb_cpu_packed, check=False)
    memory = footprint(reloaded)  # as loaded: a repack changes the quant state's size
    facts = verify_arm(arm, reloaded, out_dir, source_linears)
    after = probe_logits(reloaded, tokenizer)
    probe_diff = relative_max_diff(after, before)
    if saved_check is not None and saved_check["problems"]:
        raise AssertionError(
            f"arm {arm.name}: the saved weights are not the ones quantized in memory: "
            + "; ".join(saved_check["problems"])
        )
    # A compressed-tensors arm's check is the weight-level one (every stored weight within a step
    # of memory, its bytes found in the files, every other tensor equal): its saved weights may
    # differ from memory by rounding ties, and the dequantized weights of memory and reload by
    # the last bit of bf16, either of which moves the probe's logits (on random 8B weights FP8's
    # by 0.5 on the H200). The probe is recorded for it, and decides for the other arms.
    if not probe_diff <= probe_tolerance and saved_check is None:
        raise AssertionError(
            f"arm {arm.name}: reloaded logits differ from the saved model's by {probe_diff:.3g} "
            f"(relative max), more than {probe_tolerance}"
        )
    return write_arm_record(
        arm, out_dir, seconds, source_sha256,
        device=device_record(device) | {"used": device} | bnb_cpu_record(reloaded),
        memory=memory, verified=facts, probe_diff=probe_diff, saved_check=saved_check,
    )  # fmt: skip


def write_arm_record(
    arm: Arm,
    out_dir: Path,
    seconds: float,
    source_sha256: dict[str, str],
    *,
    device: dict[str, Any],
    memory: dict[str, int],
    verified: dict[str, Any],
    probe_diff: float | None,
    saved_check: dict[str, Any] | None,
    versions: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write and return the arm's quantize.json: what was built, from which source, on what, and
    the SHA-256 of every weight file in `out_dir` (checked before every later load)."""
    files = dir_weight_files(out_dir)
    record = {
        "arm": arm.name,
        "method": arm.method,
        "bits": arm.bits,
        "parameters": arm.params(),
        "seconds": seconds,
        "device": device,
        "disk_bytes": disk_bytes(files),
        "memory_bytes": memory,
        "sha256": sha256_files(files, out_dir),
        "source_sha256": source_sha256,
        "verified": verified,
        "reload_probe_rel_diff": probe_diff,
        "compression_check": saved_check,
        "versions": package_versions() | (versions or {}),
        "code_version": code_version(),
    }
    write_json(out_dir / "quantize.json", record)
    return record


def quantize_gguf(
    arm: GgufArm,
    source: Path,
    out_dir: Path,
    source_sha256: dict[str, str],
    root: Path | str = ".",
) -> dict[str, Any]:
    """llama.cpp's converter and quantizer build the file, the gguf package verifies each tensor
    (quantstudy.gguf.verify_gguf), then llama.cpp reloads it and runs the probe: its logits must
    be finite, and their distance from the source's is recorded (quantization and runtime
    together, so not held to a tolerance)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .gguf import MODEL_FILE, build_gguf_arm, gguf_bytes, llama_cpp_build
    from .llamacpp import LlamaCppModel

    texts = None if arm.calibration is None else calibration_texts(arm, root)
    facts, seconds = build_gguf_arm(arm, source, out_dir, texts)
    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    ids = tokenizer(PROBE_TEXT).input_ids
    after = LlamaCppModel(out_dir).score(ids)[-1]
    if not torch.isfinite(after).all():
        raise AssertionError(f"arm {arm.name}: llama.cpp's probe logits are not finite")
    reference = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    before = probe_logits(reference, tokenizer)
    facts["probe_vs_source_rel_diff"] = relative_max_diff(after, before)
    facts["probe_top1_agrees"] = bool(after.argmax() == before.argmax())
    facts["quantized_modules"] = facts["weight_matrices"] if arm.quantized else 0
    return write_arm_record(
        arm, out_dir, seconds, source_sha256,
        device=device_record("cpu") | {"used": "cpu", "runtime": "llama.cpp"} | bnb_cpu_record(),
        memory=gguf_bytes(out_dir / MODEL_FILE), verified=facts, probe_diff=None,
        saved_check=None, versions=llama_cpp_build(),
    )  # fmt: skip
