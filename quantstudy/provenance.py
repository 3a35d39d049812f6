"""What was measured, exactly: file hashes, package versions, the device."""

from __future__ import annotations

import hashlib
import json
import platform
from collections.abc import Iterable, Mapping
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
ARM_RECORD = "quantize.json"
"""The record beside a saved arm's weights; its `sha256` maps each weight file to its digest."""
SOURCE_RECORD = "source.json"
"""The record beside the prepared source's weights, with the same `sha256` map."""


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


class WeightsChanged(ValueError):
    """A model directory's weight files are not the ones its record lists (changed, missing or
    added since the record was written)."""


def check_weights(
    directory: Path | str,
    expected: Mapping[str, str] | None = None,
    *,
    record: str = ARM_RECORD,
) -> dict[str, str]:
    """Raise WeightsChanged unless the directory's weight files are exactly those `expected`
    lists, with those SHA-256 digests; return the digests checked.

    `expected` defaults to the `sha256` map of the directory's `record` (file names relative to
    the directory, as `sha256_files` writes them). Every problem is named in the message: a
    changed file (path, expected and found digest), a listed file that is missing, a weight file
    that is not listed.
    """
    directory = Path(directory)
    if expected is None:
        path = directory / record
        try:
            expected = json.loads(path.read_text())["sha256"]
        except (OSError, ValueError, KeyError) as error:
            raise WeightsChanged(f"{path}: no SHA-256 record to check the weights against "
                                 f"({type(error).__name__}: {error})") from error  # fmt: skip
    found = {str(f.relative_to(directory)): f for f in dir_weight_files(directory)}
    problems = []
    for name, digest in sorted(expected.items()):
        if name not in found:
            problems.append(f"{directory / name}: missing (expected sha256 {digest})")
        elif (actual := sha256_file(found[name])) != digest:
            problems.append(f"{found[name]}: expected sha256 {digest}, found {actual}")
    for name in sorted(set(found) - set(expected)):
        problems.append(f"{found[name]}: not listed in {record} (found sha256 "
                        f"{sha256_file(found[name])})")  # fmt: skip
    if problems:
        raise WeightsChanged(
            f"the weights in {directory} are not the ones {record} lists: " + "; ".join(problems)
        )
    return dict(expected)


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
