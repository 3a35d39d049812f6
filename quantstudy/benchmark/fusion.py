"""Fused projections for the static mode's decode step: the query, key and value projections of
an attention block, and the gate and up projections of a gated MLP, each computed by one matmul
over their stacked weights (one kernel instead of three or two, on wider matrices, which keeps
more of the GPU busy at batch 1).

The model's own forward code is kept: the first projection of a group is replaced by a
`FusedHead` that runs the stacked layer and returns its own slice, the others by `FusedTail`s that
return theirs, which they check were computed from the very tensor they are given (a model that
called them in another order or on other inputs fails, and `fuse_checked` then leaves it
unfused). Every stacked layer is checked against the layers it replaces on random inputs. The
original layers are left holding views of the stacked weights, so fusing costs no second copy;
`Fusion.undo` puts them back, each given its own copy again (eager mode runs them unfused). Left
as views, they once made an 8B bf16 step compiled with max-autotune run at 8.75 ms per token on the
H200, against 5.03 ms measured earlier (another H200) over layers in their own storage.

Why layer by layer and not the model's logits: a wider matrix may take another GEMM algorithm,
whose bf16 rounding differs in the last bit, and through the 32 layers of a random-weight 8B
model such differences grew to 5% of the logits on the H200 (tinygemm, exact per row, gave 0).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import fp8, int4

# Groups of layers that read the same input, by attribute name, in the order models call them.
GROUPS = {
    "qkv": ("q_proj", "k_proj", "v_proj"),
    "gate_up": ("gate_proj", "up_proj"),
}
# Largest relative difference of a stacked layer's outputs from the layers it replaces: the same
# products, but a wider matrix may take another GEMM algorithm (bf16 on the H200: 1.8e-4).
TOLERANCE = 1e-2


class FusedHead(torch.nn.Module):
    """The first projection of a fused group: runs the stacked layer, keeps the others' slices
    for the `FusedTail`s and returns its own."""

    def __init__(self, stacked: torch.nn.Module, sizes: list[int], slot: dict):
        super().__init__()
        self.stacked, self.sizes, self.slot = stacked, sizes, slot

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first, *rest = self.stacked(x).split(self.sizes, dim=-1)
        self.slot["input"], self.slot["outputs"] = x, rest
        return first


class FusedTail(torch.nn.Module):
    """Another projection of a fused group: its slice of the head's output."""

    def __init__(self, slot: dict, index: int, last: bool):
        super().__init__()
        self.slot, self.index, self.last = slot, index, last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.slot.get("input") is not x:
            raise RuntimeError("a fused projection was called before its group's first one")
        out = self.slot["outputs"][self.index]
        if self.last:
            self.slot.clear()
        return out


@dataclass
class Fusion:
    """What `fuse_projections` did: groups fused per kind, and why others were not."""

    fused: dict[str, int] = field(default_factory=lambda: dict.fromkeys(GROUPS, 0))
    not_fused: dict[str, int] = field(default_factory=dict)  # reason: count of groups
    max_rel_error: float | None = None
    reason: str | None = None  # why nothing was fused, where nothing was
    _undo: list[Callable[[], None]] = field(default_factory=list, repr=False)

    def undo(self) -> None:
        """Put the original layers back (they hold views of the stacked weights)."""
        while self._undo:
            self._undo.pop()()

    @property
    def record(self) -> dict[str, Any]:
        return {
            "fused": dict(self.fused),
            "not_fused": dict(self.not_fused),
            "max_rel_error": self.max_rel_error,
            "reason": self.reason,
        }


def _plain_linear(module: torch.nn.Module) -> bool:
    return type(module) is torch.nn.Linear and "forward" not in vars(module)


def stack_linears(layers: list[torch.nn.Linear]) -> tuple[torch.nn.Linear, Callable[[], None]]:
    """One nn.Linear computing the concatenated outputs of `layers`, and a function that points
    each layer's weight (and bias) at its rows of the stacked one."""
    first = layers[0]
    if len({(m.in_features, m.weight.dtype, m.weight.device, m.bias is None) for m in layers}) > 1:
        raise ValueError("layers differ in input size, dtype, device or bias")
    sizes = [m.out_features for m in layers]
    stacked = torch.nn.Linear(
        first.in_features, sum(sizes), bias=first.bias is not None, device="meta"
    )
    stacked.weight = torch.nn.Parameter(torch.cat([m.weight.data for m in layers]), False)
    if first.bias is not None:
        stacked.bias = torch.nn.Parameter(torch.cat([m.bias.data for m in layers]), False)

    def share() -> None:
        start = 0
        for layer, size in zip(layers, sizes):
            layer.weight = torch.nn.Parameter(stacked.weight.data[start : start + size], False)
            if first.bias is not None:
                layer.bias = torch.nn.Parameter(stacked.bias.data[start : start + size], False)
            start += size

    return stacked, share


def _stack(layers: list[torch.nn.Module]) -> tuple[torch.nn.Module, Callable[[], None]]:
    if all(_plain_linear(m) for m in layers):
        return stack_linears(layers)
    if all(isinstance(m, (int4.Int4Linear, int4.DequantInt4Linear)) for m in layers):
        return int4.stack_layers(layers)
    if all(isinstance(m, fp8.Fp8Linear) for m in layers):
        return fp8.stack_layers(layers)
    kinds = sorted({type(m).__name__ for m in layers})
    raise ValueError(f"{'/'.join(kinds)} layers are not stacked")


def check_stacked(stacked: torch.nn.Module, layers: list[torch.nn.Module], seed: int = 0) -> float:
    """‖stacked(x) − [layer(x) …]‖ / ‖[layer(x) …]‖ on random x (4 rows) in the layers' dtype."""
    weight = next(t for t in (*stacked.parameters(), *stacked.buffers()) if t.is_floating_point())
    dtype = getattr(stacked, "input_dtype", weight.dtype)  # an FP8 layer's activations are not FP8
    generator = torch.Generator(device=weight.device).manual_seed(seed)
    in_features = layers[0].in_features
    x = torch.randn(4, in_features, generator=generator, device=weight.device).to(dtype)
    return int4.relative_error(stacked(x), torch.cat([layer(x) for layer in layers], dim=-1))


def _note(fusion: Fusion, reason: str) -> None:
    fusion.not_fused[reason] = fusion.not_fused.get(reason, 0) + 1


@torch.no_grad()
def fuse_projections(model: torch.nn.Module) -> Fusion:
    """Fuse every group of GROUPS the model's layers allow, each stacked layer checked against
    the layers it replaces (`check_stacked`), in place; `Fusion.undo` reverses it."""
    fusion = Fusion()
    errors: list[float] = []
    for parent in list(model.modules()):
        for kind, names in GROUPS.items():
            layers = [getattr(parent, name, None) for name in names]
            if any(not isinstance(m, torch.nn.Module) for m in layers):
                continue
            try:
                stacked, share = _stack(layers)
            except ValueError as error:
                _note(fusion, str(error))
                continue
            except torch.OutOfMemoryError:  # the stacked copy is made before the originals go
                _note(fusion, "out of memory while stacking")
                continue
            error = check_stacked(stacked, layers)
            if not error <= TOLERANCE:
                _note(fusion, f"stacked layer off the separate ones by more than {TOLERANCE}")
                continue
            errors.append(error)
            share()  # the originals now hold views: the stacked weights are the only copy
            slot: dict = {}
            sizes = [m.out_features for m in layers]
            replacements = [FusedHead(stacked, sizes, slot)] + [
                FusedTail(slot, i, i == len(names) - 1) for i in range(len(names) - 1)
            ]
            for name, new in zip(names, replacements):
                setattr(parent, name, new)
            fusion._undo.append(functools.partial(_put_back, parent, dict(zip(names, layers))))
            fusion.fused[kind] += 1
    fusion.max_rel_error = max(errors) if errors else None
    if not any(fusion.fused.values()):
        fusion.reason = "; ".join(fusion.not_fused) or "no q/k/v or gate/up projections"
    return fusion


@torch.no_grad()
def fuse_checked(model: torch.nn.Module, ids: torch.Tensor) -> Fusion:
    """`fuse_projections`, then one forward of the fused model on `ids`: where it fails (a
    projection called out of its group's order, or on another input), the model is put back
    unfused and the Fusion says why (nothing fused)."""
    if not _any_group(model):
        return Fusion(reason="no q/k/v or gate/up projections")
    fusion = fuse_projections(model)
    if not any(fusion.fused.values()):
        return fusion
    try:
        model(input_ids=ids[:, :8])
    except RuntimeError as failure:
        fusion.undo()
        fusion.fused = dict.fromkeys(GROUPS, 0)
        fusion.reason = f"the fused model failed: {failure}"
    return fusion


def _put_back(parent: torch.nn.Module, layers: dict[str, torch.nn.Module]) -> None:
    """Put the original layers back on `parent`, each tensor that is a view of a stacked one
    copied into storage of its own (the stacked tensor is freed with its last view)."""
    for name, layer in layers.items():
        setattr(parent, name, layer)
        for key, tensor in [
            *layer.named_parameters(recurse=False),
            *layer.named_buffers(recurse=False),
        ]:
            if tensor is None or tensor.untyped_storage().nbytes() == tensor.nbytes:
                continue
            own = tensor.data.clone()
            if isinstance(tensor, torch.nn.Parameter):
                own = torch.nn.Parameter(own, requires_grad=False)
            setattr(layer, key, own)


def _any_group(model: torch.nn.Module) -> bool:
    return any(
        all(isinstance(getattr(m, n, None), torch.nn.Module) for n in names)
        for m in model.modules()
        for names in GROUPS.values()
    )
