"""FP8-dynamic arms on an FP8 matmul: compressed-tensors' float-quantized linear layers with FP8
E4M3 weights (one scale per output channel, or one per tensor) and activations quantized to FP8
per token at run time (llm-compressor's FP8_DYNAMIC), as transformers loads them, converted into
a linear that keeps the FP8 weights and multiplies in FP8.

transformers 5.17 runs these layers two ways, neither of which a CUDA graph can capture: by
default compressed-tensors decompresses the weights to bf16 on the first forward and fake-
quantizes the activations in every call (Dynamo fails on its `QuantizationArgs`); with
`CompressedTensorsConfig(use_optimized_inference=True)` its FP8 layer calls
`torch.nn.functional.scaled_mm`, whose `_scaled_mm_v2` Dynamo in torch 2.11 does not trace.

Kernel offered here:

- ``scaled_mm``: ``aten._scaled_mm`` with row-wise scales (the activations' per-token scales
  and the weights' per-channel ones), bf16/fp16 out. On CUDA (compute capability 8.9 and up) it
  is cuBLASLt's FP8 GEMM; on the CPU, torch's reference implementation. The activations are
  quantized in torch ops in front of it (amax per row / 448, rounded to E4M3), as
  compressed-tensors defines them, so torch.compile fuses that into the step.

FP8 weight-only arms (no activation quantization) and INT8 W8A8 arms are not converted: with
bf16 activations there is no FP8 product to run, and stock PyTorch's int8 product
(`aten._int_mm`) needs more than 16 rows. They stay on transformers' path (decompressed).

Every converted layer is checked against compressed-tensors' own arithmetic (its activation
fake-quantization and weight dequantization, the product in float32) before the model is used.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .int4 import conversion_record, relative_error, release_parameters, set_module

KERNELS = ("scaled_mm",)
KERNEL_NAMES = {
    "scaled_mm": {
        "cuda": "aten._scaled_mm (cuBLASLt FP8 GEMM, row-wise scales; activations quantized "
        "per token in torch ops)",
        "cpu": "aten._scaled_mm (CPU reference; activations quantized per token in torch ops)",
    },
}
# Largest relative error of a converted layer against compressed-tensors' arithmetic: both
# multiply the same FP8 values; the rest is the order of float32 sums and bf16 rounding of the
# output and of the scales (FP8 without the activation quantization is 3-4% off, caught).
TOLERANCE = 1e-2
E4M3_MAX = float(torch.finfo(torch.float8_e4m3fn).max)  # 448


def is_fp8_dynamic(module: torch.nn.Module) -> bool:
    """Whether a module is a compressed-tensors FP8 linear layer, still compressed, whose
    activations are quantized per token at run time (channel or tensor weight scales)."""
    scheme = getattr(module, "quantization_scheme", None)
    weight = getattr(module, "weight", None)
    if scheme is None or weight is None or weight.dtype != torch.float8_e4m3fn:
        return False
    w, a = scheme.weights, scheme.input_activations
    return (
        isinstance(module, torch.nn.Linear)
        and _args(w) in {("float", 8, "channel", False), ("float", 8, "tensor", False)}
        and _args(a) == ("float", 8, "token", True)
    )


def _args(args) -> tuple | None:
    """(type, bits, strategy, dynamic) of compressed-tensors QuantizationArgs (None: none)."""
    if args is None:
        return None
    return (enum_value(args.type), args.num_bits, enum_value(args.strategy), args.dynamic is True)


def enum_value(field) -> str:
    """A QuantizationArgs field as its string: compressed-tensors holds some as enums, some as
    their values."""
    return str(getattr(field, "value", field))


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (rows, in) to FP8 E4M3 with one float32 scale per row: scale = amax / 448."""
    scale = x.abs().amax(dim=-1, keepdim=True).float().clamp(min=1e-12) / E4M3_MAX
    return (x.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn), scale


class Fp8Linear(torch.nn.Module):
    """y = x Wᵀ + b with W held in FP8 E4M3 and one float32 scale per output row; x quantized to
    FP8 per row in each call; the product in `aten._scaled_mm`, out in x's dtype."""

    def __init__(
        self,
        weight: torch.Tensor,
        scale: torch.Tensor,
        bias: torch.Tensor | None = None,
        input_dtype: torch.dtype = torch.bfloat16,
    ):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.input_dtype = input_dtype  # the activations' dtype it was built for (checks use it)
        self.register_buffer("weight", weight)  # (out, in) float8_e4m3fn
        self.register_buffer("scale", scale.float().reshape(1, -1))  # (1, out)
        self.bias = None if bias is None else torch.nn.Parameter(bias, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        xq, x_scale = quantize_rows(x.reshape(-1, shape[-1]))
        y = torch._scaled_mm(
            xq, self.weight.t(), scale_a=x_scale, scale_b=self.scale, bias=self.bias,
            out_dtype=x.dtype,
        )  # fmt: skip
        return y.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fp8_e4m3"


def to_scaled_mm(module: torch.nn.Module, input_dtype: torch.dtype) -> Fp8Linear:
    """The Fp8Linear holding a compressed-tensors FP8 layer's weights and scales (no copy of the
    FP8 weight; a per-tensor scale repeated per row)."""
    scale = module.weight_scale.detach().float().reshape(-1)
    if scale.numel() == 1:
        scale = scale.expand(module.out_features).contiguous()
    bias = None if module.bias is None else module.bias.detach()
    return Fp8Linear(module.weight.detach(), scale, bias, input_dtype)


CONVERTERS: dict[str, Callable[[torch.nn.Module, torch.dtype], torch.nn.Module]] = {
    "scaled_mm": to_scaled_mm
}


@torch.no_grad()
def reference_output(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What the compressed-tensors layer defines for x (rows of tokens), by compressed-tensors'
    own functions in float32: the activations fake-quantized per token as its scheme says, times
    its dequantized weight. float32, as a deployment quantizes (transformers' path fake-quantizes
    in bf16, whose double rounding moved a layer's outputs by ~2% on the CPU tests)."""
    from compressed_tensors.quantization.lifecycle.forward import dequantize, forward_quantize

    scheme = module.quantization_scheme
    # a leading batch dimension: compressed-tensors' token strategy takes (batch, tokens, features)
    xq = forward_quantize(module, x.float().unsqueeze(0), "input", scheme.input_activations)[0]
    weight = dequantize(module.weight, module.weight_scale.float(), args=scheme.weights)
    out = xq.float() @ weight.float().T
    return out if module.bias is None else out + module.bias.float()


@torch.no_grad()
def check_layer(new: torch.nn.Module, module: torch.nn.Module, dtype: torch.dtype, batch: int = 4,
                seed: int = 0) -> float:  # fmt: skip
    """‖new(x) − reference‖ / ‖reference‖ on random x (`batch` rows of `dtype`)."""
    device = module.weight.device
    generator = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(batch, module.in_features, generator=generator, device=device).to(dtype)
    return relative_error(new(x), reference_output(module, x))


def kernel_name(kernel: str, device: torch.device | str) -> str:
    """The op a kernel choice runs on a device."""
    return KERNEL_NAMES[kernel][torch.device(device).type]


@torch.no_grad()
def convert_model(
    model: torch.nn.Module, kernel: str, tolerance: float = TOLERANCE
) -> dict[str, Any]:
    """Replace every FP8-dynamic layer (`is_fp8_dynamic`) by the kernel's FP8 layer, in place,
    each checked against compressed-tensors' arithmetic (raises ValueError naming the layer when
    it is off by more than `tolerance`). Returns the record: kernel, op, layers converted, worst
    and median relative error (the same shape as `quantstudy.int4.convert_model`'s)."""
    if kernel not in CONVERTERS:
        raise ValueError(f"unknown FP8 kernel {kernel!r} (known: {', '.join(CONVERTERS)})")
    dtype = model.dtype if model.dtype in (torch.bfloat16, torch.float16) else torch.bfloat16
    errors: dict[str, float] = {}
    device = None
    for name, module in list(model.named_modules()):
        if not is_fp8_dynamic(module):
            continue
        device = module.weight.device
        new = CONVERTERS[kernel](module, dtype)
        error = check_layer(new, module, dtype)
        if not error <= tolerance:
            raise ValueError(f"{name}: {kernel} layer is {error:.3g} off compressed-tensors' own")
        errors[name] = error
        set_module(model, name, new)
        release_parameters(module)
    op = kernel_name(kernel, device) if device is not None else None
    return conversion_record(kernel, op, errors, tolerance, dtype)


def has_layers(model: torch.nn.Module) -> bool:
    """Whether a model holds any compressed FP8-dynamic layer."""
    return any(is_fp8_dynamic(m) for m in model.modules())


def stack_layers(layers: list[Fp8Linear]) -> tuple[Fp8Linear, Callable[[], None]]:
    """One Fp8Linear computing the concatenated outputs of `layers` (same input size, device,
    bias or not), and a function that points each layer's buffers at views of the stacked
    layer's (per-row scales stack with their rows)."""
    first = layers[0]
    if any(type(m) is not Fp8Linear for m in layers):
        raise ValueError(f"cannot stack {', '.join(type(m).__name__ for m in layers)}")
    if len({(m.in_features, m.weight.device, m.bias is None, m.input_dtype) for m in layers}) > 1:
        raise ValueError("layers differ in input size, device, dtype or bias")
    sizes = [m.out_features for m in layers]
    bias = None if first.bias is None else torch.cat([m.bias.data for m in layers])
    stacked = Fp8Linear(
        torch.cat([m.weight for m in layers]),
        torch.cat([m.scale for m in layers], dim=1),
        bias,
        first.input_dtype,
    )

    def share() -> None:
        start = 0
        for layer, size in zip(layers, sizes):
            layer.weight = stacked.weight[start : start + size]
            layer.scale = stacked.scale[:, start : start + size]
            if bias is not None:
                layer.bias = torch.nn.Parameter(stacked.bias.data[start : start + size], False)
            start += size

    return stacked, share
