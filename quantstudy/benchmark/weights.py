"""What a model holds: its footprint in memory, the weight bytes one decode step reads (the
roofline's numerator), and which Linear kernels it runs."""

from __future__ import annotations

import torch

from .. import memory


def footprint(model: torch.nn.Module) -> dict[str, int]:
    """`quantstudy.memory.footprint` (the one definition every stage uses) with the record's
    key names: parameters_bytes, buffers_bytes, quant_state_bytes, total_bytes."""
    return {f"{key}_bytes": value for key, value in memory.footprint(model).items()}


def _untied_input_embedding_bytes(model: torch.nn.Module) -> int:
    """Bytes of the input embedding table when it is not also the output head (a decode step
    reads one row of it, not the table)."""
    try:
        inp = model.get_input_embeddings().weight
        out = model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return 0
    out_weight = getattr(out, "weight", None)
    if out_weight is not None and out_weight.data_ptr() == inp.data_ptr():
        return 0
    return inp.numel() * inp.element_size()


def _unread_linear_bytes(model: torch.nn.Module) -> int:
    """Bytes of parameters other than weight and bias held by plain nn.Linear modules, which
    Linear.forward never reads (compressed-tensors keeps weight_scale etc. beside the dense weight
    it decompressed)."""
    total = 0
    for module in model.modules():
        if type(module) is not torch.nn.Linear or "forward" in vars(module):
            continue
        params = dict(module.named_parameters(recurse=False))
        if "weight" not in params:
            continue
        total += sum(
            p.numel() * p.element_size() for n, p in params.items() if n not in ("weight", "bias")
        )
    return total


def weight_bytes_excluded(model: torch.nn.Module) -> dict[str, int]:
    """Footprint bytes a decode step does not read: an untied input embedding table (one row is
    read), and parameters plain Linear layers hold but do not use."""
    return {
        "untied_input_embedding": _untied_input_embedding_bytes(model),
        "unused_linear_params": _unread_linear_bytes(model),
    }


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes one decode step reads from the weights: the footprint (packed weights plus absmax and
    scales for bitsandbytes) less what weight_bytes_excluded lists."""
    return footprint(model)["total_bytes"] - sum(weight_bytes_excluded(model).values())


def linear_layers(model: torch.nn.Module) -> dict[str, int]:
    """Count of Linear-like modules by class and stored weight dtype: which kernel a forward uses
    (e.g. `Linear4bit:weight:uint8`, or `Linear:weight_packed:int32` before compressed-tensors
    decompresses and `Linear:weight:bfloat16` after)."""
    counts: dict[str, int] = {}
    for module in model.modules():
        if not (isinstance(module, torch.nn.Linear) or "Linear" in type(module).__name__):
            continue
        params = dict(module.named_parameters(recurse=False))
        name = next((n for n in ("weight", "weight_packed") if n in params), None)
        if name is None:
            continue
        key = f"{type(module).__name__}:{name}:{str(params[name].dtype).removeprefix('torch.')}"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))
