"""Memory, one definition each for every stage: what a model holds (`footprint`), what running
out of memory looks like (`is_out_of_memory`), and how a byte count is written (`fmt_bytes`)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where a model or an error is at hand: the report does not
    import torch


def footprint(model: torch.nn.Module) -> dict[str, int]:
    """Bytes the model holds in memory: parameters, buffers, the bitsandbytes quantization state
    kept beside its weights (4-bit: absmax, code map, nested state and offset; int8: the per-row
    scales SCB), and their total.

    Neither quant state is a parameter or a buffer, so neither is in `parameters` or `buffers`.
    """
    import torch

    params = sum(_nbytes(p) for p in model.parameters())
    buffers = sum(_nbytes(b) for b in model.buffers())
    quant_state = 0
    for module in model.modules():
        state = getattr(getattr(module, "weight", None), "quant_state", None)
        if state is not None:
            quant_state += sum(_nbytes(t) for t in _quant_state_tensors(state))
    # int8's row scales sit on the weight until the layer's first forward moves them to its state
    scales = {
        id(scb): scb
        for module in model.modules()
        for holder in (getattr(module, "weight", None), getattr(module, "state", None))
        if isinstance(scb := getattr(holder, "SCB", None), torch.Tensor)
    }
    quant_state += sum(_nbytes(scb) for scb in scales.values())
    return {
        "parameters": params,
        "buffers": buffers,
        "quant_state": quant_state,
        "total": params + buffers + quant_state,
    }


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _quant_state_tensors(state) -> list[torch.Tensor]:
    """The tensors of a bitsandbytes 4-bit QuantState, its nested state's included."""
    import torch

    out = [
        t for t in (getattr(state, "absmax", None), getattr(state, "code", None)) if t is not None
    ]
    nested = getattr(state, "state2", None)
    if nested is not None:
        out += _quant_state_tensors(nested)
    offset = getattr(state, "offset", None)
    if isinstance(offset, torch.Tensor):
        out.append(offset)
    return out


OUT_OF_MEMORY_WORDS = ("out of memory", "not enough memory", "can't allocate memory")
"""What an allocation failure says: CUDA's "out of memory" (torch's OutOfMemoryError, and CUDA
errors raised as RuntimeError, e.g. by bitsandbytes' kernels), and PyTorch's CPU allocator's
"can't allocate memory" (older releases: "not enough memory")."""


def is_out_of_memory(error: BaseException) -> bool:
    """Whether an error means an allocation failed for want of memory, on the GPU or the host:
    torch's OutOfMemoryError, or any error whose message says so (OUT_OF_MEMORY_WORDS).

    The benchmark records such an error as a measurement ("does not fit"), and an evaluate job's
    retry halves its batch after one; both treat the host as they treat a GPU, since on the CPU
    the host's memory is the device's."""
    import torch

    words = str(error).lower()
    return isinstance(error, torch.OutOfMemoryError) or any(w in words for w in OUT_OF_MEMORY_WORDS)


def fmt_bytes(n: float | None) -> str:
    """A byte count in MiB/GiB ("–" when unknown)."""
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return "–"
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"
