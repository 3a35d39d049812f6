"""GPTQ/AWQ arms on a real int4 kernel: compressed-tensors' pack-quantized linear layers, as
transformers loads them (packed int4 ``weight_packed``, ``weight_scale``, ``weight_zero_point``
when asymmetric, ``weight_g_idx`` where activation order saved one), converted into a linear that
keeps the 4-bit weights and runs a low-bit kernel, without a dense copy ever being made.

transformers 5.17 has no int4 kernel for this format: it decompresses every layer to dense bf16
on the first forward (the study's "dense" path). Kernels offered here:

- ``tinygemm``: torch core's ``aten._weight_int4pack_mm`` (CUDA, bf16 activations; the kernel
  behind torchao's Int4WeightOnlyConfig ``tile_packed_to_4d``) and its CPU twin
  ``aten._weight_int4pack_mm_for_cpu``. It computes ``W = (q_u - 8) * s + zero`` with q_u in 0..15
  and a float zero per group, so compressed-tensors' ``W = (q - z) * s`` (q, z in -8..7) maps
  exactly to ``q_u = q + 8`` and ``zero = -z * s`` (held in bf16, like the scales).
- ``gemlite``: gemlite's A16W4 Triton kernels (CUDA only), which take ``W = (q_u - z_u) * s``
  directly (``z_u = z + 8``).
- ``compiled``: the packed nibbles (uint8, two per byte), scales and zero points kept as they are,
  and the dequantization written in torch ops before the matmul (`DequantInt4Linear`). Eager, that
  makes a dense weight per call (slow, correct); under ``torch.compile`` with coordinate-descent
  tuning (max-autotune) inductor rewrites a one-row matmul as a multiply-and-reduce and fuses the
  dequantization into it, so at batch 1 the step runs one generated Triton GEMV per layer that
  reads the 4-bit weights (`torch._inductor.decomposition.mm`).

Every converted layer is checked against the dense layer compressed-tensors' own decompression
gives (`check_layer`), on random inputs, before the model is used.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

KERNELS = ("tinygemm", "gemlite", "compiled")
# What each kernel is called in records and reports: the op or module that runs.
KERNEL_NAMES = {
    "tinygemm": {
        "cuda": "aten._weight_int4pack_mm (tinygemm)",
        "cpu": "aten._weight_int4pack_mm_for_cpu",
    },
    "gemlite": {"cuda": "gemlite A16W4 (Triton GEMV/GEMM)"},
    "compiled": {
        "cuda": "int4 dequantization in torch ops, fused into the matmul by torch.compile "
        "(a generated Triton GEMV at batch 1 under max-autotune)",
        "cpu": "int4 dequantization in torch ops, then a dense matmul",
    },
}
# Largest relative error (‖y − y_ref‖ / ‖y_ref‖) of a converted layer against the dense one:
# bf16 operands land between 1e-3 and 1e-2 in a matrix product (tinygemm: 2.6e-3 on the CPU,
# below 1e-2 on the H200); gemlite's A16W4 kernel measured 1.9e-2 on 4096 x 4096 layers on the H200.
# compiled: the same bf16 weight compressed-tensors decompresses to, so a plain bf16 matmul's error.
TOLERANCE = {"tinygemm": 1e-2, "gemlite": 3e-2, "compiled": 1e-2}


@dataclass
class Int4Weights:
    """One layer's int4 weights as compressed-tensors defines them: W = (q - z) * s per group."""

    q: torch.Tensor  # int8, (out, in), values in -8..7
    scale: torch.Tensor  # (out, in // group_size)
    zero: torch.Tensor | None  # int8, (out, in // group_size), -8..7; None when symmetric
    group_size: int
    g_idx: torch.Tensor | None  # int, (in,): group of each input column; None = contiguous

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.q.shape)  # type: ignore[return-value]


def is_packed_int4(module: torch.nn.Module) -> bool:
    """Whether a module is a compressed-tensors pack-quantized 4-bit grouped linear layer."""
    scheme = getattr(module, "quantization_scheme", None)
    params = dict(module.named_parameters(recurse=False))
    if scheme is None or scheme.weights is None or "weight_packed" not in params:
        return False
    args = scheme.weights
    return (
        args.num_bits == 4
        and str(getattr(args.type, "value", args.type)) == "int"
        and str(getattr(args.strategy, "value", args.strategy)) == "group"
        and scheme.input_activations is None
    )


def unpack(module: torch.nn.Module) -> Int4Weights:
    """The int4 weights of a compressed-tensors pack-quantized layer (see `is_packed_int4`)."""
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32

    args = module.quantization_scheme.weights
    shape = torch.Size(int(v) for v in module.weight_shape.tolist())
    q = unpack_from_int32(module.weight_packed.data, 4, shape)
    scale = module.weight_scale.data
    zero = None
    packed_zero = getattr(module, "weight_zero_point", None)
    if not args.symmetric and packed_zero is not None:
        zero = unpack_from_int32(packed_zero.data, 4, torch.Size(scale.shape), packed_dim=0)
    g_idx = getattr(module, "weight_g_idx", None)
    return Int4Weights(
        q=q.to(torch.int8),
        scale=scale,
        zero=None if zero is None else zero.to(torch.int8),
        group_size=int(args.group_size),
        g_idx=None if g_idx is None else g_idx.data.to(torch.long),
    )


def dequantize(w: Int4Weights, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The dense weight (out, in) of int4 weights, computed directly from the definition."""
    groups = _groups(w)
    scale = w.scale.float()[:, groups]
    zero = 0.0 if w.zero is None else w.zero.float()[:, groups]
    return ((w.q.float() - zero) * scale).to(dtype)


def reference_weight(module: torch.nn.Module) -> torch.Tensor:
    """The dense weight compressed-tensors' own decompression gives for a packed layer (the
    independent reference every converted layer is checked against)."""
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor

    state = {
        name: p.data
        for name, p in module.named_parameters(recurse=False)
        if name.startswith("weight_")
    }
    return PackedQuantizationCompressor.decompress(state, module.quantization_scheme)["weight"]


def _groups(w: Int4Weights) -> torch.Tensor:
    """The group of each input column."""
    if w.g_idx is not None:
        return w.g_idx.to(w.q.device)
    return torch.arange(w.shape[1], device=w.q.device) // w.group_size


def _column_order(w: Int4Weights) -> torch.Tensor | None:
    """A permutation of the input columns that makes groups contiguous (None: they are already),
    for weights saved with activation order (g_idx). Raises ValueError when the groups are not
    all of group_size columns (no contiguous layout exists then)."""
    if w.g_idx is None:
        return None
    groups = w.g_idx.to(w.q.device)
    if torch.equal(groups, torch.arange(w.shape[1], device=groups.device) // w.group_size):
        return None
    counts = torch.bincount(groups, minlength=w.scale.shape[1])
    if not bool((counts == w.group_size).all()):
        raise ValueError("g_idx groups are not all of group_size columns")
    return torch.argsort(groups, stable=True)


def _unsigned(w: Int4Weights) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(q_u in 0..15 as uint8 with groups contiguous, zero in the same order or None, column
    order or None)."""
    order = _column_order(w)
    q = (w.q.to(torch.int16) + 8).to(torch.uint8)
    if order is not None:
        q = q[:, order]
    zero = None if w.zero is None else (w.zero.to(torch.int16) + 8).to(torch.uint8)
    return q, zero, order


class Int4Linear(torch.nn.Module):
    """A linear layer on packed int4 weights (tinygemm layout): y = x Wᵀ + b, with W never
    materialised. Activations are cast to the compute dtype (bf16 on CUDA) and back."""

    def __init__(
        self,
        packed: torch.Tensor,
        scales_and_zeros: torch.Tensor,
        group_size: int,
        in_features: int,
        out_features: int,
        bias: torch.Tensor | None = None,
        order: torch.Tensor | None = None,
    ):
        super().__init__()
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        self.register_buffer("packed", packed)
        self.register_buffer("scales_and_zeros", scales_and_zeros)
        self.register_buffer("order", order)
        self.bias = None if bias is None else torch.nn.Parameter(bias, requires_grad=False)
        self._mm = (
            torch.ops.aten._weight_int4pack_mm_for_cpu
            if packed.device.type == "cpu"
            else torch.ops.aten._weight_int4pack_mm
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if self.order is not None:
            x2 = x2.index_select(1, self.order)
        y = self._mm(x2.to(self.scales_and_zeros.dtype), self.packed, self.group_size,
                     self.scales_and_zeros)  # fmt: skip
        if self.bias is not None:
            y = y + self.bias
        return y.to(x.dtype).reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"group_size={self.group_size}, kernel=tinygemm"
        )


def _inner_k_tiles(in_features: int) -> int:
    for tiles in (8, 4, 2):
        if in_features % (tiles * 16) == 0:
            return tiles
    raise ValueError(f"in_features {in_features} is not a multiple of 32 (tinygemm)")


def to_tinygemm(
    w: Int4Weights, bias: torch.Tensor | None, dtype: torch.dtype = torch.bfloat16
) -> Int4Linear:
    """An Int4Linear (torch core's tinygemm kernel) holding the same int4 weights."""
    n, k = w.shape
    if w.q.device.type == "cuda":
        dtype = torch.bfloat16  # the CUDA kernel takes bf16 only
    if w.group_size not in (32, 64, 128, 256):
        raise ValueError(f"tinygemm takes group sizes 32, 64, 128, 256, not {w.group_size}")
    q, zero, order = _unsigned(w)
    tiles = _inner_k_tiles(k)
    if q.device.type == "cpu":
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32), tiles)
    else:
        packed = torch.ops.aten._convert_weight_to_int4pack(q[:, ::2] << 4 | q[:, 1::2], tiles)
    scale = w.scale.to(torch.float32)
    float_zero = torch.zeros_like(scale) if zero is None else -(zero.float() - 8) * scale
    scales_and_zeros = torch.stack([scale, float_zero], dim=-1).transpose(0, 1).contiguous()
    return Int4Linear(
        packed, scales_and_zeros.to(dtype), w.group_size, k, n, bias=bias, order=order
    )


class GemliteLinear(torch.nn.Module):
    """gemlite's A16W4 layer, with the input columns permuted first where g_idx asks."""

    def __init__(self, layer: torch.nn.Module, order: torch.Tensor | None):
        super().__init__()
        self.layer = layer
        self.register_buffer("order", order)
        self.in_features, self.out_features = layer.in_features, layer.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.order is not None:
            x = x.index_select(-1, self.order)
        return self.layer(x)


def to_gemlite(
    w: Int4Weights, bias: torch.Tensor | None, dtype: torch.dtype = torch.bfloat16
) -> torch.nn.Module:
    """gemlite's A16W4 layer holding the same int4 weights (CUDA only)."""
    from gemlite.helper import A16W4_HQQ_INT

    q, zero, order = _unsigned(w)
    zero_u = torch.full_like(w.scale, 8) if zero is None else zero.to(w.scale.dtype)
    layer = A16W4_HQQ_INT(device=str(q.device), dtype=dtype).from_weights(
        q, w.scale.to(dtype), zero_u.to(dtype), bias=bias
    )
    return GemliteLinear(layer, order)


class DequantInt4Linear(torch.nn.Module):
    """A linear layer on int4 weights kept packed two per byte (uint8, low nibble first), with
    the dequantization ``W = (q_u - z_u) * s`` written in torch ops in front of the matmul, for
    torch.compile to fuse (kernel ``compiled``). W is made in the compute dtype, the same rounding
    compressed-tensors' decompression makes; eager, every call builds it (correct, slow)."""

    def __init__(
        self,
        packed: torch.Tensor,
        scale: torch.Tensor,
        zero: torch.Tensor | None,
        group_size: int,
        bias: torch.Tensor | None = None,
        order: torch.Tensor | None = None,
    ):
        super().__init__()
        self.out_features, self.in_features = packed.shape[0], packed.shape[1] * 2
        self.group_size = group_size
        self.register_buffer("packed", packed)  # uint8 (out, in // 2): q_u of column 2j, 2j+1
        self.register_buffer("scale", scale)  # (out, in // group_size), compute dtype
        self.register_buffer("zero", zero)  # z_u, same shape and dtype; None: symmetric (8)
        self.register_buffer("order", order)
        self.bias = None if bias is None else torch.nn.Parameter(bias, requires_grad=False)

    def weight(self) -> torch.Tensor:
        """The dense weight (out, in) in the compute dtype."""
        n, groups = self.scale.shape
        q = torch.stack([self.packed & 15, self.packed >> 4], dim=-1).view(n, groups, -1)
        zero = 8 if self.zero is None else self.zero.unsqueeze(-1)
        w = (q.to(self.scale.dtype) - zero) * self.scale.unsqueeze(-1)
        return w.view(n, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.order is not None:
            x = x.index_select(-1, self.order)
        dtype = x.dtype
        y = torch.nn.functional.linear(x.to(self.scale.dtype), self.weight(), self.bias)
        return y.to(dtype)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"group_size={self.group_size}, kernel=compiled"
        )


def to_compiled(
    w: Int4Weights, bias: torch.Tensor | None, dtype: torch.dtype = torch.bfloat16
) -> DequantInt4Linear:
    """A DequantInt4Linear holding the same int4 weights (kernel ``compiled``)."""
    q, zero, order = _unsigned(w)
    if q.shape[1] % 2:
        raise ValueError(f"in_features {q.shape[1]} is odd: int4 packs two columns per byte")
    packed = (q[:, 0::2] | (q[:, 1::2] << 4)).contiguous()
    return DequantInt4Linear(
        packed,
        w.scale.to(dtype).contiguous(),
        None if zero is None else zero.to(dtype).contiguous(),
        w.group_size,
        bias=None if bias is None else bias.to(dtype),
        order=order,
    )


CONVERTERS: dict[str, Callable[..., torch.nn.Module]] = {
    "tinygemm": to_tinygemm,
    "gemlite": to_gemlite,
    "compiled": to_compiled,
}


def kernel_name(kernel: str, device: torch.device | str) -> str:
    """The op or module a kernel choice runs on a device (raises ValueError where none exists)."""
    kind = torch.device(device).type
    names = KERNEL_NAMES.get(kernel, {})
    if kind not in names:
        raise ValueError(f"int4 kernel {kernel!r} does not run on {kind}")
    return names[kind]


@torch.no_grad()
def check_layer(
    layer: torch.nn.Module,
    reference: torch.Tensor,
    bias: torch.Tensor | None,
    dtype: torch.dtype,
    batch: int = 4,
    seed: int = 0,
) -> float:
    """‖layer(x) − x·Wᵀ‖ / ‖x·Wᵀ‖ on random x (`batch` rows) against the dense reference weight,
    the reference product in float32."""
    generator = torch.Generator(device=reference.device).manual_seed(seed)
    x = torch.randn(batch, reference.shape[1], generator=generator, device=reference.device).to(
        dtype
    )
    expected = x.float() @ reference.float().T
    if bias is not None:
        expected = expected + bias.float()
    return relative_error(layer(x), expected)


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """‖got − want‖ / ‖want‖ in float32; infinite where `got` is not finite."""
    got, want = got.float(), want.float()
    if not torch.isfinite(got).all():
        return float("inf")
    return float((got - want).norm() / want.norm().clamp_min(1e-30))


@torch.no_grad()
def convert_model(
    model: torch.nn.Module, kernel: str, tolerance: float | None = None
) -> dict[str, Any]:
    """Replace every compressed-tensors packed int4 layer by the kernel's int4 layer, in place,
    each checked against compressed-tensors' dense decompression of the same layer (`check_layer`;
    raises ValueError naming the layer when it is off by more than `tolerance`). Returns the
    record: kernel, op that runs, layers converted, worst and median relative error.

    The packed weights are unpacked one layer at a time: no dense copy of the model exists."""
    if kernel not in CONVERTERS:
        raise ValueError(f"unknown int4 kernel {kernel!r} (known: {', '.join(CONVERTERS)})")
    tolerance = TOLERANCE[kernel] if tolerance is None else tolerance
    errors: dict[str, float] = {}
    device = None
    dtype = _compute_dtype(model)
    for name, module in list(model.named_modules()):
        if not is_packed_int4(module):
            continue
        device = module.weight_packed.device
        w = unpack(module)
        bias = None if getattr(module, "bias", None) is None else module.bias.data
        new = CONVERTERS[kernel](w, bias, dtype)
        error = check_layer(new, reference_weight(module), bias, dtype)
        if not error <= tolerance:
            raise ValueError(f"{name}: {kernel} layer is {error:.3g} off the dense one")
        errors[name] = error
        set_module(model, name, new)
        release_parameters(module)
    if device is not None and device.type == "cuda":
        torch.cuda.empty_cache()
    op = kernel_name(kernel, device) if device is not None else None
    return conversion_record(kernel, op, errors, tolerance, dtype)


def conversion_record(
    kernel: str, op: str | None, errors: dict[str, float], tolerance: float, dtype: torch.dtype
) -> dict[str, Any]:
    """The record of a model's low-bit conversion (schema `low_bit`; int4 and FP8 alike): kernel,
    op that runs, layers converted, worst and median relative error of a layer."""
    ordered = sorted(errors.values())
    return {
        "kernel": kernel,
        "op": op,
        "layers": len(errors),
        "max_rel_error": ordered[-1] if ordered else None,
        "median_rel_error": ordered[len(ordered) // 2] if ordered else None,
        "tolerance": tolerance,
        "compute_dtype": str(dtype).removeprefix("torch."),
    }


def _compute_dtype(model: torch.nn.Module) -> torch.dtype:
    """The activations' dtype of the converted layers: the model's float dtype where the kernel
    takes it, bf16 otherwise (tinygemm on CUDA takes bf16 only)."""
    dtype = getattr(model, "dtype", torch.bfloat16)
    return dtype if dtype in (torch.bfloat16, torch.float16, torch.float32) else torch.bfloat16


def release_parameters(module: torch.nn.Module) -> None:
    """Drop a replaced layer's packed tensors: compressed-tensors' loading hooks keep references
    to the modules they wrapped (measured on the H200 before this: 3.6 GB of packed int4 weights
    of an 8B model stayed allocated beside the converted layers)."""
    for name in [n for n, _ in module.named_parameters(recurse=False)]:
        delattr(module, name)


def set_module(model: torch.nn.Module, name: str, new: torch.nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def has_layers(model: torch.nn.Module) -> bool:
    """Whether a model holds any compressed-tensors packed int4 layer (before decompression)."""
    return any(is_packed_int4(m) for m in model.modules())


# Stacking layers that read the same input into one (quantstudy.benchmark.fusion): the output
# rows of each kernel's layout are contiguous slices of its buffers, so the stacked layer's
# buffers are concatenated along them and each original layer is left holding views of the
# stacked ones (no second copy) except where a layout is not sliceable (tinygemm's scales).
def stack_layers(layers: list[torch.nn.Module]) -> tuple[torch.nn.Module, Callable[[], None]]:
    """One int4 layer computing the concatenated outputs of `layers` (same class, input, group
    size and dtype; no column order), and a function that points each layer's buffers at views
    of the stacked layer's. Raises ValueError where the layers cannot be stacked."""
    first = layers[0]
    kind = type(first)
    if kind not in (Int4Linear, DequantInt4Linear) or any(type(m) is not kind for m in layers):
        raise ValueError(f"cannot stack {', '.join(type(m).__name__ for m in layers)}")
    if any(m.order is not None for m in layers):
        raise ValueError("layers saved with activation order (g_idx) permute their inputs apart")
    same = ("in_features", "group_size")
    if any(getattr(m, a) != getattr(first, a) for m in layers for a in same):
        raise ValueError("layers differ in input size or group size")
    if len({m.bias is None for m in layers}) > 1:
        raise ValueError("some layers have a bias and some do not")
    floats = {(t.dtype, t.device) for m in layers for t in m.buffers() if t.is_floating_point()}
    if len(floats) > 1:
        raise ValueError("layers differ in dtype or device")
    bias = None if first.bias is None else torch.cat([m.bias.data for m in layers])
    sizes = [m.out_features for m in layers]
    if kind is Int4Linear:
        rows = [m.out_features // m.packed.shape[0] for m in layers]  # CUDA: 8 rows per entry
        if (
            any(r * m.packed.shape[0] != m.out_features for r, m in zip(rows, layers))
            or len(set(rows)) > 1
        ):
            raise ValueError("tinygemm layouts differ")
        stacked: torch.nn.Module = Int4Linear(
            torch.cat([m.packed for m in layers]),
            torch.cat([m.scales_and_zeros for m in layers], dim=1),
            first.group_size,
            first.in_features,
            sum(sizes),
            bias=bias,
        )
        names, divisors = ("packed",), (rows[0],)
    else:
        zeros = [m.zero for m in layers]
        if any((z is None) != (zeros[0] is None) for z in zeros):
            raise ValueError("symmetric and asymmetric layers")
        stacked = DequantInt4Linear(
            torch.cat([m.packed for m in layers]),
            torch.cat([m.scale for m in layers]),
            None if zeros[0] is None else torch.cat(zeros),
            first.group_size,
            bias=bias,
        )
        names = ("packed", "scale") + (() if zeros[0] is None else ("zero",))
        divisors = (1,) * len(names)

    def share() -> None:
        start = 0
        for layer, size in zip(layers, sizes):
            for name, rows_per in zip(names, divisors):
                rows = slice(start // rows_per, (start + size) // rows_per)
                setattr(layer, name, getattr(stacked, name)[rows])
            if bias is not None:
                layer.bias = torch.nn.Parameter(stacked.bias.data[start : start + size], False)
            start += size

    return stacked, share
