"""What was measured, exactly: file hashes, package versions, the device."""

from __future__ import annotations

import hashlib
import json
import platform
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = (
    "torch",
    "transformers",
    "accelerate",
    "bitsandbytes",
    "llmcompressor",
    "compressed-tensors",
    "lm_eval",
    "snakemake",
    "datasets",
)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


def sha256_file(path: Path | str, chunk: int = 1 << 20) -> str:
    """SHA256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def dir_weight_files(directory: Path | str) -> list[Path]:
    """The weight files of a model directory, sorted."""
    directory = Path(directory)
    return sorted(p for p in directory.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())


def sha256_files(files: Iterable[Path], root: Path | str) -> dict[str, str]:
    """SHA256 of each file, keyed by its path relative to root."""
    return {str(Path(f).relative_to(root)): sha256_file(f) for f in files}


def disk_bytes(files: Iterable[Path]) -> int:
    """Total size of files on disk."""
    return sum(Path(f).stat().st_size for f in files)


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str | None]:
    """Installed versions of the packages a result depends on (None where not installed)."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def device_info() -> dict[str, Any]:
    """The device a job ran on: GPU name and memory, CUDA and driver, or the CPU."""
    import torch

    from .loading import cpu_capability, has_avx512bf16

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_capability": cpu_capability(),
        "bnb_avx512bf16": has_avx512bf16(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            device_kind="cuda",
            device_name=props.name,
            device_memory_bytes=props.total_memory,
            cuda=torch.version.cuda,
        )
        try:
            import pynvml

            pynvml.nvmlInit()
            info["driver"] = pynvml.nvmlSystemGetDriverVersion()
        except Exception:  # noqa: BLE001 - nvml is optional
            info["driver"] = None
    else:
        info.update(device_kind="cpu", device_name=info["cpu"])
    return info


def write_json(path: Path | str, obj: Any) -> None:
    """Write JSON with sorted keys and a trailing newline, creating parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
