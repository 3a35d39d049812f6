"""What a job ran on: one device record for every stage (quantize, evaluate, benchmark).

The device, its memory, driver, CUDA and library versions, the CPU (its model and the kernel
level torch and bitsandbytes use there) and, on CUDA, the clocks and power limit by NVML. The
benchmark schema's `device` (schemas/benchmark.schema.yaml) describes it; quantize.json and the
evaluation JSONs add `used` (the device string the job was given) and `bnb_cpu_path`."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch

from .loading import cpu_capability, has_avx512bf16


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The device a job runs on: the given one, else cuda:<current> when a GPU is visible, else
    cpu; a bare "cuda" becomes cuda:<current>."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def device_record(device: str | torch.device | None) -> dict[str, Any]:
    """What a job ran on (see `resolve_device`): device, memory, driver, CUDA, library versions,
    the CPU, clocks."""
    from .provenance import package_versions

    device = resolve_device(device)
    versions = package_versions(("torch", "transformers", "bitsandbytes", "compressed-tensors"))
    record: dict[str, Any] = {
        "device_kind": device.type,
        "name": None,
        "total_memory_bytes": None,
        "driver": None,
        "cuda": torch.version.cuda,
        "torch": torch.__version__,
        "transformers": versions["transformers"],
        "bitsandbytes": versions["bitsandbytes"],
        "compressed_tensors": versions["compressed-tensors"],
        "python": platform.python_version(),
        "cpu_model": _cpu_model(),
        "cpu_capability": cpu_capability(),
        "bnb_avx512bf16": has_avx512bf16(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "clocks": None,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        record.update(
            name=props.name,
            total_memory_bytes=props.total_memory,
            capability=f"{props.major}.{props.minor}",
            multiprocessors=props.multi_processor_count,
            driver=_nvml_driver(),
        )
        record["clocks"] = _nvml_clocks(props)
    else:
        record.update(name=record["cpu_model"], total_memory_bytes=_host_memory_bytes())
    return record


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or None


def _host_memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _nvml_driver() -> str | None:
    """The NVIDIA driver's version, by NVML; None if unreadable."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - NVML is optional
        return None
    try:
        return pynvml.nvmlSystemGetDriverVersion()
    except Exception:  # noqa: BLE001
        return None
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass


def _nvml_clocks(props) -> dict[str, Any] | None:
    """Current and maximum SM/memory clocks and the power limit, by NVML; None if unreadable."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - NVML is optional
        return None
    try:
        handle = None
        uuid = getattr(props, "uuid", None)
        if uuid is not None:
            text = str(uuid)
            try:
                handle = pynvml.nvmlDeviceGetHandleByUUID(
                    text if text.startswith("GPU-") else f"GPU-{text}"
                )
            except Exception:  # noqa: BLE001
                handle = None
        if (
            handle is None
            and torch.cuda.device_count() == 1
            and "CUDA_VISIBLE_DEVICES" not in os.environ
        ):
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        if handle is None:
            return None
        out: dict[str, Any] = {}
        readings = {
            "sm_mhz": lambda: pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM),
            "memory_mhz": lambda: pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_MEM),
            "max_sm_mhz": lambda: pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_SM),
            "max_memory_mhz": lambda: pynvml.nvmlDeviceGetMaxClockInfo(
                handle, pynvml.NVML_CLOCK_MEM
            ),
            "power_limit_w": lambda: pynvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000,
            "temperature_c": lambda: pynvml.nvmlDeviceGetTemperature(
                handle, pynvml.NVML_TEMPERATURE_GPU
            ),
        }
        for key, read in readings.items():
            try:
                out[key] = read()
            except Exception:  # noqa: BLE001
                out[key] = None
        return out
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass
