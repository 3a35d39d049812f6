"""The GPU lease (quantstudy/gpus.py) with fake devices from QUANTSTUDY_GPUS and real processes.

Each holder is a separate Python process that takes a lease, writes what it got (device, its
CUDA_VISIBLE_DEVICES, the ledger at that moment) to a file, and holds the lease until the test
creates its release file. The tests wait for events (files, log lines), never for durations.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from quantstudy import gpus

ROOT = Path(__file__).resolve().parent.parent
CARD = 81559

HOLDER = r"""
import json, logging, os, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from quantstudy import gpus
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
mem, exclusive, out, release = int(sys.argv[2]), sys.argv[3] == "1", Path(sys.argv[4]), Path(sys.argv[5])
with gpus.lease(mem, exclusive=exclusive, label=out.stem) as device:
    ledger = json.loads((gpus.ledger_dir() / "ledger.json").read_text())["leases"]
    got = {"device": device, "cvd": os.environ.get("CUDA_VISIBLE_DEVICES"), "pid": os.getpid(),
           "ledger": ledger}
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(got))
    os.replace(tmp, out)
    end = time.monotonic() + 300  # a safety net only: the test releases us
    while not release.exists() and time.monotonic() < end:
        time.sleep(0.02)
print("released", flush=True)
"""


def wait_for(predicate, what: str, limit: float = 120.0):
    """Poll until predicate() is truthy (the limit only stops a hung test)."""
    end = time.monotonic() + limit
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class Holder:
    """A process holding (or waiting for) a lease."""

    def __init__(self, tmp: Path, env: dict, name: str, mem_mb: int, exclusive: bool = False):
        self.out, self.release_file = tmp / f"{name}.json", tmp / f"{name}.release"
        self.log = tmp / f"{name}.log"
        args = [
            str(ROOT),
            str(mem_mb),
            "1" if exclusive else "0",
            str(self.out),
            str(self.release_file),
        ]
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", HOLDER, *args], env=env, stdout=log, stderr=log
            )

    def got(self) -> dict:
        """What the lease gave (waits until the holder has it)."""
        return json.loads(
            wait_for(lambda: self.out.exists() and self.out.read_text(), self.out.name)
        )

    def has_lease(self) -> bool:
        return self.out.exists()

    def is_waiting(self) -> bool:
        return "waiting" in self.log.read_text()

    def release(self) -> None:
        self.release_file.touch()
        assert self.proc.wait(timeout=120) == 0, self.log.read_text()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=60)


@pytest.fixture
def gpu_env(tmp_path, monkeypatch):
    """Two fake 80 GB cards, a private ledger, fast polling; no scheduler in the environment."""
    monkeypatch.setenv("QUANTSTUDY_GPUS", f"0:{CARD},1:{CARD}")
    monkeypatch.setenv("QUANTSTUDY_GPU_LEDGER", str(tmp_path / "ledger"))
    monkeypatch.setenv("QUANTSTUDY_GPU_POLL", "0.05")
    for name in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID", "QUANTSTUDY_GPU_MEM_MB"):
        monkeypatch.delenv(name, raising=False)
    return dict(os.environ)


@pytest.fixture
def holders(tmp_path, gpu_env):
    started = []

    def start(name, mem_mb, exclusive=False, env=None):
        h = Holder(tmp_path, env or gpu_env, name, mem_mb, exclusive)
        started.append(h)
        return h

    yield start
    for h in started:
        if h.proc.poll() is None:
            h.proc.kill()
            h.proc.wait()


def ledger_devices(got: dict) -> list[tuple[str, int, bool]]:
    return sorted((x["device"], x["mem_mb"], x["exclusive"]) for x in got["ledger"])


def test_two_big_jobs_get_different_cards(holders):
    a = holders("a", 60000)
    got_a = a.got()
    b = holders("b", 60000)
    got_b = b.got()
    assert {got_a["device"], got_b["device"]} == {"0", "1"}
    assert got_a["cvd"] == got_a["device"] and got_b["cvd"] == got_b["device"]
    assert ledger_devices(got_b) == sorted(
        [(got_a["device"], 60000, False), (got_b["device"], 60000, False)]
    )
    a.release()
    b.release()


def test_two_small_jobs_pack_onto_one_card(holders):
    a = holders("a", 20000)
    got_a = a.got()
    b = holders("b", 20000)
    got_b = b.got()
    assert got_a["device"] == got_b["device"] == "0"
    # a third job too big for what is left on card 0 goes to the empty card
    c = holders("c", 50000)
    assert c.got()["device"] == "1"
    for h in (a, b, c):
        h.release()


def test_exclusive_lease_waits_for_an_empty_card(holders, gpu_env):
    one_card = {**gpu_env, "QUANTSTUDY_GPUS": f"0:{CARD}"}
    small = holders("small", 1000, env=one_card)
    assert small.got()["device"] == "0"
    bench = holders("bench", 1000, exclusive=True, env=one_card)
    wait_for(bench.is_waiting, "the exclusive lease to wait")
    assert not bench.has_lease()
    small.release()
    got = bench.got()
    assert got["device"] == "0"
    assert ledger_devices(got) == [("0", 1000, True)]  # the small job's lease was gone first
    # while the exclusive lease is held, even a tiny job waits
    tiny = holders("tiny", 1, env=one_card)
    wait_for(tiny.is_waiting, "the tiny lease to wait")
    assert not tiny.has_lease()
    bench.release()
    assert tiny.got()["device"] == "0"
    tiny.release()


def test_exclusive_lease_takes_the_empty_card_of_two(holders):
    small = holders("small", 1000)
    assert small.got()["device"] == "0"
    bench = holders("bench", 1000, exclusive=True)
    assert bench.got()["device"] == "1"
    other = holders("other", 1000)
    assert other.got()["device"] == "0"  # never beside the benchmark
    for h in (small, bench, other):
        h.release()


def test_dead_pids_lease_is_reclaimed(holders, gpu_env, tmp_path):
    one_card = {**gpu_env, "QUANTSTUDY_GPUS": f"0:{CARD}"}
    dead = holders("dead", 70000, env=one_card)
    dead_pid = dead.got()["pid"]
    dead.kill()  # SIGKILL: no finally block runs, the lease stays in the ledger
    ledger = json.loads((tmp_path / "ledger" / "ledger.json").read_text())["leases"]
    assert [x["pid"] for x in ledger] == [dead_pid]
    nxt = holders("next", 70000, env=one_card)
    got = nxt.got()
    assert got["device"] == "0"
    assert [x["pid"] for x in got["ledger"]] == [got["pid"]]
    nxt.release()
    assert json.loads((tmp_path / "ledger" / "ledger.json").read_text())["leases"] == []


def test_lease_is_released_on_exceptions_and_times_out(gpu_env, tmp_path, monkeypatch):
    monkeypatch.setenv("QUANTSTUDY_GPUS", f"0:{CARD}")
    ledger = tmp_path / "ledger" / "ledger.json"
    with pytest.raises(RuntimeError, match="boom"):
        with gpus.lease(CARD) as device:
            assert device == "0" and os.environ["CUDA_VISIBLE_DEVICES"] == "0"
            # the card is full: a second lease gives up when its timeout is spent
            os.environ.pop("CUDA_VISIBLE_DEVICES")
            with pytest.raises(TimeoutError):
                with gpus.lease(1, timeout=0):
                    pass
            raise RuntimeError("boom")
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    assert json.loads(ledger.read_text())["leases"] == []


def test_more_than_a_card_means_a_whole_card(gpu_env):
    with gpus.lease(10 * CARD) as first:
        os.environ.pop("CUDA_VISIBLE_DEVICES")
        with gpus.lease(10 * CARD) as second:
            assert {first, second} == {"0", "1"}
            os.environ.pop("CUDA_VISIBLE_DEVICES")
            with pytest.raises(TimeoutError):
                with gpus.lease(1, timeout=0):
                    pass


@pytest.mark.parametrize(
    "env, expected",
    [
        ({"CUDA_VISIBLE_DEVICES": "3"}, "3"),  # a scheduler chose the device
        ({"CUDA_VISIBLE_DEVICES": ""}, ""),  # ... or hid every device
        ({"SLURM_JOB_ID": "12"}, None),  # a SLURM job without GPUs
        ({"QUANTSTUDY_GPUS": ""}, None),  # no GPU on this host
    ],
)
def test_no_ops(gpu_env, tmp_path, monkeypatch, env, expected):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    with gpus.lease(1000, exclusive=True) as device:
        assert device == expected
        assert os.environ.get("CUDA_VISIBLE_DEVICES") == before
    assert not (tmp_path / "ledger").exists()


def test_no_gpu_without_nvidia_smi_or_env(monkeypatch, tmp_path):
    monkeypatch.delenv("QUANTSTUDY_GPUS", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi on it
    assert gpus.devices() == []


def test_device_list_from_env():
    assert gpus.parse_devices("0:81559, 1:40960") == [
        gpus.Device("0", 81559),
        gpus.Device("1", 40960),
    ]
    with pytest.raises(ValueError, match="index:total_mb"):
        gpus.parse_devices("0=81559")


# --- profiles/local: the GPU budget it gives snakemake ---------------------------------------


def render_local_profile() -> dict:
    """profiles/local/config.yaml as snakemake reads it (a yte template)."""
    import yte

    with open(ROOT / "profiles" / "local" / "config.yaml") as f:
        return yte.process_yaml(f)


@pytest.fixture
def fake_nvidia_smi(tmp_path, monkeypatch):
    """An nvidia-smi on PATH that answers the query with two 80 GB cards."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text('#!/bin/sh\nprintf "0, 81559\\n1, 81559\\n"\n')
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    for name in ("QUANTSTUDY_GPUS", "QUANTSTUDY_GPU_MEM_MB", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(name, raising=False)


def test_devices_from_nvidia_smi(fake_nvidia_smi, monkeypatch):
    assert gpus.devices() == [gpus.Device("0", CARD), gpus.Device("1", CARD)]
    monkeypatch.setenv("QUANTSTUDY_GPU_MEM_MB", "70000")
    assert gpus.devices() == [gpus.Device("0", 70000), gpus.Device("1", 70000)]


@pytest.mark.parametrize(
    "env, total, benchmark",
    [
        ({}, 2 * CARD, CARD),  # nvidia-smi's two cards; a benchmark takes a whole one
        ({"QUANTSTUDY_GPUS": f"0:{CARD}"}, CARD, CARD),  # one card: a benchmark takes it all
        ({"QUANTSTUDY_GPUS": "0:24000,1:48000"}, 72000, 48000),
        ({"QUANTSTUDY_GPU_MEM_MB": "70000"}, 140000, 70000),
        ({"CUDA_VISIBLE_DEVICES": "1"}, CARD, CARD),  # no leases: every job on one card
        ({"QUANTSTUDY_GPUS": ""}, None, None),  # no GPU: no GPU budget at all
    ],
)
def test_local_profile_budget(fake_nvidia_smi, monkeypatch, env, total, benchmark):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    profile = render_local_profile()
    assert profile["cores"] == "all"
    assert profile.get("resources", {}).get("gpu_mem_mb") == total
    assert "gpu" not in profile.get("resources", {})  # small jobs must be able to share a card
    assert profile.get("set-resources", {}).get("benchmark", {}).get("gpu_mem_mb") == benchmark
