"""Loading a saved arm, the one way every stage does it, and which CPU kernel its 4-bit layers run.

bitsandbytes 0.50's `Linear4bit.forward`, on a CPU with AVX512-BF16, repacks its weight for a
fused CPU kernel on the first forward (`_convert_weight_packed_for_cpu`): it dequantizes a
double-quantized absmax, stores absmax as bf16, sets the quant state's dtype to bf16 and from
then on computes in bf16, whatever `bnb_4bit_compute_dtype` says. Saving such a module
re-quantizes the absmax (a lossy inverse). So the same arm would give different scores on
different CPUs, a forward would change the state a check reads, and a save after a forward
would write other weights than were quantized.

The workflow therefore runs bitsandbytes' reference CPU path (`packed=False`, the default of
every stage): the weights stay as saved and the compute dtype is the configured one on every
CPU. `packed=True` lets the fused path run where the CPU has it (tests exercise it; a CPU
benchmark may want it); `bnb_cpu_record` says which path ran, from the modules' own state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .provenance import ARM_RECORD, check_weights

# What `bnb_cpu_record` calls each path.
REFERENCE, PACKED = "reference", "packed"


def cpu_capability() -> str:
    """torch's name for the vector instructions its CPU kernels use here (e.g. AVX512, AVX2)."""
    return str(torch.backends.cpu.get_cpu_capability())


def has_avx512bf16() -> bool:
    """Whether bitsandbytes finds AVX512-BF16 on this CPU (its packed 4-bit path needs it)."""
    try:
        from bitsandbytes.functional import has_avx512bf16 as probe
    except ImportError:
        return False
    return bool(probe())


def linear4bit_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The bitsandbytes 4-bit linear layers of a model (none when bitsandbytes is absent)."""
    try:
        from bitsandbytes.nn import Linear4bit
    except ImportError:
        return []
    return [m for m in model.modules() if isinstance(m, Linear4bit)]


def set_bnb_cpu_path(model: torch.nn.Module, packed: bool = False) -> None:
    """Choose bitsandbytes' CPU path for every 4-bit layer before any forward.

    packed=False keeps the reference path (weights as saved, configured compute dtype);
    packed=True allows the fused AVX512-BF16 path where the CPU has it, and is a no-op elsewhere.
    """
    allowed = packed and has_avx512bf16()
    for module in linear4bit_modules(model):
        module.support_avx512bf16_for_cpu = allowed


def is_repacked(module: torch.nn.Module) -> bool:
    """Whether a 4-bit layer's weight was repacked for the fused CPU kernel (by a forward)."""
    state = getattr(module.weight, "quant_state", None)
    return bool(getattr(state, "packing_format_for_cpu", False))


def bnb_cpu_record(model: torch.nn.Module | None = None) -> dict[str, Any]:
    """This CPU's capability, and which bitsandbytes 4-bit CPU path the model's layers ran.

    `bnb_cpu_path` is "packed" when any 4-bit layer was repacked, "reference" when the model has
    4-bit layers on the CPU and none was, and None when it has none there (other methods, GPU).
    """
    modules = linear4bit_modules(model) if model is not None else []
    layers = [m for m in modules if m.weight.device.type == "cpu"]
    path = None
    if layers:
        path = PACKED if any(is_repacked(m) for m in layers) else REFERENCE
    return {
        "cpu_capability": cpu_capability(),
        "bnb_avx512bf16": has_avx512bf16(),
        "bnb_cpu_path": path,
    }


def is_gguf_arm(directory: Path | str) -> bool:
    """Whether a saved arm is a GGUF file that llama.cpp runs (quantstudy.gguf)."""
    from .gguf import MODEL_FILE

    return (Path(directory) / MODEL_FILE).is_file()


def check_arm(directory: Path | str) -> None:
    """Check a saved arm's weight files against its quantize.json, when it has one: raises
    WeightsChanged (naming each file, expected and found digest) when they differ."""
    if (Path(directory) / ARM_RECORD).is_file():
        check_weights(directory)


def load_arm(
    directory: Path | str,
    device: str | torch.device,
    *,
    packed: bool = False,
    check: bool = True,
    all_logits: bool = True,
):
    """A saved arm as every stage loads it: its weight files checked against its quantize.json
    (`check_arm`; raises WeightsChanged before anything is loaded), dtype and quantization from
    its own config, in eval mode, bitsandbytes' CPU path chosen (see `set_bnb_cpu_path`) before
    any forward. `check=False` is for a caller that checked already.

    A GGUF arm (`is_gguf_arm`) loads into llama.cpp as a `quantstudy.llamacpp.LlamaCppModel`, on
    the CPU; `all_logits=False` (the benchmark) computes only each batch's last logits, as
    llama.cpp's own tools do."""
    from transformers import AutoModelForCausalLM

    if check:
        check_arm(directory)
    if is_gguf_arm(directory):
        from .llamacpp import LlamaCppModel

        return LlamaCppModel(directory, logits_all=all_logits)
    model = AutoModelForCausalLM.from_pretrained(directory, device_map=str(device), dtype="auto")
    model.eval()
    set_bnb_cpu_path(model, packed)
    return model
