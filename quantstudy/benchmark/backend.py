"""How an arm is loaded and made ready to measure (optimum-benchmark's "backend"): the timed load,
the warm-up forward that decompresses compressed-tensors weights, the no-op wrappers removed
after it, and the record of what was loaded."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .. import fp8, int4
from ..loading import bnb_cpu_record, check_arm, load_arm
from ..provenance import dir_weight_files, disk_bytes
from .settings import DENSE_KERNELS
from .timing import free_memory, synchronize
from .weights import footprint, linear_layers, weight_bytes, weight_bytes_excluded

# The low-bit layer kinds a load converts (each module has `has_layers` and `convert_model`), and
# the record of a load that left them to transformers.
LOW_BIT = {"int4": int4, "fp8": fp8}
DENSE_RECORD = {"kernel": "dense", "op": "dense matmul after compressed-tensors decompression"}


def load_model(
    directory: Path | str, device: torch.device, kernels: Mapping[str, str] | None = None
):
    """Load a saved arm onto the device; returns (model, seconds, CUDA bytes allocated by it).

    Its weight files are checked against its quantize.json first (`check_arm`, outside the
    timed load: hashing is not loading). Inside the timed load, packed int4 layers (GPTQ/AWQ) are
    converted to `kernels["int4"]`'s int4 linear (`quantstudy.int4.convert_model`) and FP8-dynamic
    layers to `kernels["fp8"]`'s FP8 linear (`quantstudy.fp8.convert_model`), each layer checked
    against compressed-tensors' own arithmetic; "dense" (the default for both) leaves them to
    transformers, which decompresses them on the first forward. The conversions' records are
    `low_bit_record(model, "int4" | "fp8")`."""
    kernels = {**DENSE_KERNELS, **(kernels or {})}
    check_arm(directory)
    synchronize(device)
    before = torch.cuda.memory_allocated(device) if device.type == "cuda" else None
    start = time.perf_counter()
    model = load_arm(directory, device, check=False, all_logits=False)
    for kind, converter in LOW_BIT.items():
        if converter.has_layers(model):
            kernel = kernels[kind]
            dense = kernel == "dense"
            record = dict(DENSE_RECORD) if dense else converter.convert_model(model, kernel)
            setattr(model, f"_quantstudy_{kind}", record)
    synchronize(device)
    seconds = time.perf_counter() - start
    allocated = torch.cuda.memory_allocated(device) - before if device.type == "cuda" else None
    return model, seconds, allocated


def low_bit_record(model, kind: str) -> dict[str, Any] | None:
    """What `load_model` did with the model's packed int4 (`kind` "int4") or FP8-dynamic ("fp8")
    layers (None: it had none): the kernel, the op that runs, layers converted and their error
    against compressed-tensors' own arithmetic."""
    return getattr(model, f"_quantstudy_{kind}", None)


def warm_up(model, ids: torch.Tensor, device: torch.device) -> int | None:
    """One eager forward (compressed-tensors arms decompress here); CUDA bytes it left allocated."""
    free_memory(device)
    before = torch.cuda.memory_allocated(device) if device.type == "cuda" else None
    model(input_ids=ids, use_cache=False)
    free_memory(device)
    return torch.cuda.memory_allocated(device) - before if device.type == "cuda" else None


def model_record(
    name: str, directory: Path, model, seconds: float, allocated, warm_ids, device, remove_wrappers
) -> dict[str, Any]:
    """The record of a loaded model (the schema's `model`): its footprint and kernels as loaded,
    then after the warm-up forward (which it runs) and the removal of no-op wrappers."""
    quantize = _read_quantize_json(directory)
    if getattr(model, "runtime", None) == "llama.cpp":
        return _llamacpp_record(name, directory, model, seconds, quantize, warm_ids)
    after_load = footprint(model)
    layers_after_load = linear_layers(model)
    grown = warm_up(model, warm_ids, device)
    removed = remove_noop_wrappers(model) if remove_wrappers else {}
    return {
        "name": name,
        "dir": str(directory),
        "method": quantize.get("method") if isinstance(quantize, dict) else None,
        "quantize": quantize,
        "dtype": str(model.dtype).removeprefix("torch."),
        "load_s": seconds,
        "disk_bytes": sum(p.stat().st_size for p in directory.rglob("*") if p.is_file()),
        "weights_disk_bytes": disk_bytes(dir_weight_files(directory)),
        "footprint_after_load": after_load,
        "footprint": footprint(model),
        "weight_bytes_per_token": weight_bytes(model),
        "weight_bytes_excluded": weight_bytes_excluded(model),
        "layers_after_load": layers_after_load,
        "layers": linear_layers(model),
        "removed_wrappers": removed,
        "cuda_allocated_after_load_bytes": allocated,
        "cuda_allocated_after_warmup_bytes": None if allocated is None else allocated + grown,
        "bnb_cpu_path": bnb_cpu_record(model)["bnb_cpu_path"],
        "int4": low_bit_record(model, "int4"),
        "fp8": low_bit_record(model, "fp8"),
    }


def _llamacpp_record(name, directory: Path, model, seconds, quantize, warm_ids) -> dict[str, Any]:
    """The record of a GGUF arm in llama.cpp: footprint and per-token bytes from the file's
    tensors (llama.cpp maps the file), ggml types for layers, the process's resident memory after
    the warm-up prompt."""
    from ..gguf import decode_bytes, gguf_bytes, tensor_table

    table = tensor_table(model.path)
    held = {f"{key}_bytes": value for key, value in gguf_bytes(model.path).items()}
    read, excluded = decode_bytes(table)
    types: dict[str, int] = {}
    for t in table.values():
        if len(t["shape"]) >= 2:
            types[t["type"]] = types.get(t["type"], 0) + 1
    model.prefill(warm_ids[0].tolist())
    return {
        "name": name,
        "dir": str(directory),
        "method": quantize.get("method") if isinstance(quantize, dict) else None,
        "quantize": quantize,
        "dtype": "gguf:" + ((quantize or {}).get("parameters") or {}).get("quant_type", "?"),
        "runtime": "llama.cpp",
        "load_s": seconds,
        "disk_bytes": sum(p.stat().st_size for p in directory.rglob("*") if p.is_file()),
        "weights_disk_bytes": disk_bytes(dir_weight_files(directory)),
        "footprint_after_load": held,
        "footprint": held,
        "weight_bytes_per_token": read,
        "weight_bytes_excluded": excluded,
        "layers_after_load": types,
        "layers": types,
        "removed_wrappers": {},
        "int4": None,
        "fp8": None,
        "cuda_allocated_after_load_bytes": None,
        "cuda_allocated_after_warmup_bytes": None,
        "process_rss_bytes": process_rss_bytes(),
        "bnb_cpu_path": None,
    }


def process_rss_bytes() -> int | None:
    """This process's resident memory (Linux: /proc/self/status VmRSS); None elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def vocab_size(model) -> int:
    """The size of the model's vocabulary (prompts are drawn from it)."""
    return int(model.config.get_text_config().vocab_size)


def name_of(directory: Path) -> str:
    """An arm's name: its quantize.json's `arm`, else the directory's name."""
    quantize = _read_quantize_json(directory)
    if isinstance(quantize, dict) and isinstance(quantize.get("arm"), str):
        return quantize["arm"]
    return directory.name


def check_vocab(models: Mapping[str, Any]) -> None:
    """Raise ValueError unless every model has the same vocabulary."""
    sizes = {name: vocab_size(model) for name, model in models.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"arm and baseline have different vocabularies: {sizes}")


def _read_quantize_json(directory: Path) -> dict[str, Any] | None:
    path = directory / "quantize.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def remove_noop_wrappers(model: torch.nn.Module) -> dict[str, int]:
    """Remove compressed-tensors' per-module forward wrappers where they change nothing; returns
    how many of each kind were removed.

    A decompressed compressed-tensors model (GPTQ/AWQ W4A16 under transformers) runs dense
    Linear layers, but keeps two wrappers on every module: an offloading forward that moves the
    inputs and routes every parameter access through a cache even when nothing is offloaded, and
    a `quantized_forward` that, with no activation quantization and the weights already
    decompressed, only patches `weight.data` to itself. Both are per-call Python overhead no
    deployment carries, and both stop torch.compile(fullgraph=True). Wrappers that do work
    (real offloading to another device, activation quantization) are kept.
    """
    removed = {"offload": _remove_noop_offload(model), "quantized_forward": 0}
    for module in model.modules():
        code = getattr(getattr(vars(module).get("forward"), "__func__", None), "__code__", None)
        if code is None or code.co_name != "quantized_forward":
            continue
        if "compressed_tensors" in code.co_filename and _quantized_forward_is_identity(module):
            del module.forward  # back to the class's forward
            removed["quantized_forward"] += 1
    return removed


def _quantized_forward_is_identity(module: torch.nn.Module) -> bool:
    from compressed_tensors.quantization import QuantizationStatus

    scheme = getattr(module, "quantization_scheme", None)
    status = getattr(module, "quantization_status", None)
    if not getattr(module, "quantization_enabled", True) or scheme is None or status is None:
        return True
    if scheme.input_activations is not None or scheme.output_activations is not None:
        return False
    return scheme.weights is None or status >= QuantizationStatus.COMPRESSED


def _remove_noop_offload(model: torch.nn.Module) -> int:
    """Undo compressed-tensors offloading if every module is onloaded and offloaded to the same
    device; the number of modules unwrapped."""
    try:
        from compressed_tensors.offload import remove_dispatch
        from compressed_tensors.offload.cache.base import OffloadCache
    except ImportError:
        return 0
    caches = [m._parameters for m in model.modules() if isinstance(m._parameters, OffloadCache)]
    if not caches or not all(_same_device(c.onload_device, c.offload_device) for c in caches):
        return 0
    remove_dispatch(model, onload_tensors=True)
    return len(caches)


def _same_device(a, b) -> bool:
    try:
        a, b = torch.device(a), torch.device(b)
    except (RuntimeError, TypeError):  # e.g. "disk"
        return False
    if a.type != b.type:
        return False
    if a.type != "cuda":
        return True
    current = torch.cuda.current_device()
    return (current if a.index is None else a.index) == (current if b.index is None else b.index)
