"""A GPU lease for jobs on one machine: which device a job runs on, and how much of it is taken.

Snakemake's local executor counts resources (``gpu_mem_mb`` against ``--resources``) but gives
no device ids (snakemake issue #281), so on a host with several GPUs every job would land on
device 0. A job script therefore takes a lease before it touches CUDA::

    with gpus.lease(snakemake.resources.gpu_mem_mb, exclusive=False):
        ...  # CUDA_VISIBLE_DEVICES now names one device

The lease picks the device whose free budget fits the job (best fit, so small jobs pack onto one
card and whole cards stay free for big or exclusive ones), sets ``CUDA_VISIBLE_DEVICES`` and
records the job in a per-host ledger: a JSON file in a lock directory, changed only under an
exclusive ``fcntl.flock``. When nothing fits it polls until something does (or times out). The
lease is given back on exit, exceptions included; leases of processes that died without giving
theirs back (SIGKILL, OOM killer) are reclaimed by the next job that reads the ledger.

No-ops:
- ``CUDA_VISIBLE_DEVICES`` is set already (a scheduler such as SLURM chose the device, or the
  user did), or the job runs inside a SLURM job (``SLURM_JOB_ID``): the scheduler owns devices;
- there is no GPU: no ``nvidia-smi`` (or it fails) and no ``QUANTSTUDY_GPUS``.

Environment:
- ``QUANTSTUDY_GPUS``: the devices as ``index:total_mb,...`` (e.g. ``0:81559,1:81559``) instead
  of asking ``nvidia-smi``; also restricts a run to some devices. Empty: no GPU.
- ``QUANTSTUDY_GPU_MEM_MB``: the budget of every card in MB instead of its memory (headroom).
- ``QUANTSTUDY_GPU_LEDGER``: the lock directory (default ``/tmp/quantstudy-gpus-<uid>``). Jobs
  share devices only if they share this directory.
- ``QUANTSTUDY_GPU_TIMEOUT``: seconds to wait for a device (default 86400); then TimeoutError.
- ``QUANTSTUDY_GPU_POLL``: seconds between tries while waiting (default 5).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

ENV_GPUS = "QUANTSTUDY_GPUS"
ENV_MEM = "QUANTSTUDY_GPU_MEM_MB"
ENV_LEDGER = "QUANTSTUDY_GPU_LEDGER"
ENV_TIMEOUT = "QUANTSTUDY_GPU_TIMEOUT"
ENV_POLL = "QUANTSTUDY_GPU_POLL"
DEFAULT_TIMEOUT_S = 86400.0
DEFAULT_POLL_S = 5.0


@dataclass(frozen=True)
class Device:
    index: str
    total_mb: int


def parse_devices(spec: str) -> list[Device]:
    """``"0:81559,1:81559"`` -> devices; an empty string -> none."""
    out = []
    for item in spec.replace(" ", "").split(","):
        if not item:
            continue
        index, sep, total = item.partition(":")
        if not sep or not index or not total.isdigit():
            raise ValueError(f"{ENV_GPUS}: {item!r} is not index:total_mb (e.g. 0:81559)")
        out.append(Device(index, int(total)))
    return out


def devices() -> list[Device]:
    """The host's GPUs (QUANTSTUDY_GPUS, else nvidia-smi; [] without any), with their budgets."""
    found = _detect()
    per_card = os.environ.get(ENV_MEM)
    if per_card:
        return [Device(d.index, int(per_card)) for d in found]
    return found


def _detect() -> list[Device]:
    if ENV_GPUS in os.environ:
        return parse_devices(os.environ[ENV_GPUS])
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run(
            [smi, "--query-gpu=index,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout  # fmt: skip
        return parse_devices(
            ",".join(":".join(p.strip() for p in line.split(",")) for line in out.splitlines())
        )
    except (OSError, subprocess.SubprocessError, ValueError) as e:
        log.warning(
            "gpu lease: nvidia-smi gave no usable device list (%s); running without a lease", e
        )
        return []


def scheduler_owns_devices() -> bool:
    """A scheduler (or the user) chose the devices already: leave them alone."""
    return "CUDA_VISIBLE_DEVICES" in os.environ or "SLURM_JOB_ID" in os.environ


def ledger_dir() -> Path:
    return Path(os.environ.get(ENV_LEDGER) or f"/tmp/quantstudy-gpus-{os.getuid()}")


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (tells a reused PID apart), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]


def _alive(pid: int, started: str | None) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's live process
    if started is not None:
        now = _start_time(pid)
        if now is not None and now != started:
            return False  # the PID was reused by another process
    return True


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[Path]:
    """Hold the ledger's lock; yield the ledger file's path."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "ledger.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield directory / "ledger.json"
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _read(path: Path) -> list[dict]:
    try:
        leases = json.loads(path.read_text())["leases"]
    except FileNotFoundError:
        return []
    except (ValueError, KeyError, TypeError) as e:
        log.warning("gpu lease: %s is unreadable (%s); starting a new ledger", path, e)
        return []
    return [x for x in leases if isinstance(x, dict)]


def _write(path: Path, leases: list[dict]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"leases": leases}, indent=1))
    os.replace(tmp, path)


def _live(leases: list[dict], host: str) -> list[dict]:
    """Drop leases whose process is gone (only this host's processes can be checked)."""
    kept = []
    for x in leases:
        if x.get("host") == host and not _alive(int(x.get("pid", 0)), x.get("started")):
            log.info(
                "gpu lease: reclaimed device %s from dead pid %s", x.get("device"), x.get("pid")
            )
            continue
        kept.append(x)
    return kept


def choose(devs: list[Device], leases: list[dict], mem_mb: int, exclusive: bool) -> Device | None:
    """The device this job fits on (best fit: least budget left afterwards), or None."""
    best = None
    for dev in devs:
        held = [x for x in leases if x.get("device") == dev.index]
        if any(x.get("exclusive") for x in held) or (exclusive and held):
            continue
        need = min(mem_mb, dev.total_mb)  # more than a card: it needs a whole (empty) card
        left = dev.total_mb - sum(int(x.get("mem_mb", 0)) for x in held) - need
        if left < 0:
            continue
        if best is None or left < best[0]:
            best = (left, dev)
    return None if best is None else best[1]


def status() -> list[dict]:
    """The live leases (for people wondering why a job waits)."""
    with _locked(ledger_dir()) as path:
        return _live(_read(path), socket.gethostname())


def _warn_if_cuda_initialised() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        log.warning(
            "gpu lease: CUDA was initialised before the lease; CUDA_VISIBLE_DEVICES comes too late"
        )


@contextlib.contextmanager
def lease(
    mem_mb: int | float | None,
    exclusive: bool = False,
    *,
    timeout: float | None = None,
    poll: float | None = None,
    label: str | None = None,
) -> Iterator[str | None]:
    """Hold one GPU for the duration: yields its index (or None when this is a no-op).

    mem_mb: the job's GPU memory budget (e.g. snakemake.resources.gpu_mem_mb); None or 0 counts
    as nothing. exclusive: the job wants a card of its own (benchmarks); it waits for an empty
    card, and no other job joins it while it runs.
    """
    if scheduler_owns_devices():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible is None:
            log.info("gpu lease: a SLURM job without GPUs (SLURM_JOB_ID set); no lease")
        else:
            log.info("gpu lease: CUDA_VISIBLE_DEVICES=%r set by the scheduler; no lease", visible)
        yield visible
        return
    devs = devices()
    if not devs:
        yield None
        return
    _warn_if_cuda_initialised()
    mem_mb = max(0, int(mem_mb or 0))
    timeout = float(os.environ.get(ENV_TIMEOUT, DEFAULT_TIMEOUT_S)) if timeout is None else timeout
    poll = float(os.environ.get(ENV_POLL, DEFAULT_POLL_S)) if poll is None else poll
    host, pid = socket.gethostname(), os.getpid()
    directory = ledger_dir()
    entry = {
        "id": uuid.uuid4().hex, "host": host, "pid": pid, "started": _start_time(pid),
        "mem_mb": mem_mb, "exclusive": bool(exclusive), "label": label, "since": time.time(),
    }  # fmt: skip
    deadline = time.monotonic() + timeout
    waited = False
    while True:
        with _locked(directory) as path:
            leases = _live(_read(path), host)
            dev = choose(devs, leases, mem_mb, exclusive)
            if dev is not None:
                entry["device"] = dev.index
                _write(path, [*leases, entry])
                break
            if not waited:
                log.info("gpu lease: no device fits %d MB%s; waiting (%s)", mem_mb,
                         " exclusive" if exclusive else "", directory)  # fmt: skip
                waited = True
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"gpu lease: no device fit {mem_mb} MB within {timeout:.0f} s ({directory})"
            )
        time.sleep(poll)
    log.info("gpu lease: device %s, %d MB%s", dev.index, mem_mb, " exclusive" if exclusive else "")
    os.environ["CUDA_VISIBLE_DEVICES"] = dev.index
    try:
        yield dev.index
    finally:
        os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        with _locked(directory) as path:
            _write(path, [x for x in _read(path) if x.get("id") != entry["id"]])
