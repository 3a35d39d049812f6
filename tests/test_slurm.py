"""A small tiny study through `--profile profiles/slurm` on a real one-node SLURM cluster.

The cluster is tests/slurm/cluster.sh's (slurmctld, slurmd, slurmdbd on private ports, two fake
GPUs). The test reads SLURM's own accounting (sacct) for the run: every job went through SLURM,
under its rule's name, and the GPU rules got a `gres/gpu` allocation on the gpu partition while
the CPU rules got none on the cpu partition. Skipped where the cluster cannot be started (not
root, or SLURM missing and no apt-get to install it); in CI (root, Debian) it runs.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import BENCH_SETTINGS, ROOT, TINY_CONFIG, job, jobs_in, snakemake, write_config

pytestmark = [pytest.mark.slurm, pytest.mark.workflow]

CLUSTER = ROOT / "tests" / "slurm" / "cluster.sh"
SLURM_BINARIES = ("slurmctld", "slurmd", "sbatch", "sacct", "munged")
GPU_RULES = {"quantize", "evaluate", "benchmark"}  # profiles/slurm's GPU_RULES


def cluster(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(CLUSTER), *args], capture_output=True, text=True, env={**os.environ, **(env or {})},
        timeout=900,
    )  # fmt: skip


@pytest.fixture(scope="module")
def slurm_cluster():
    """The local test cluster: started here (and stopped at the end) unless it is up already."""
    if os.geteuid() != 0:
        pytest.skip("the SLURM test cluster needs root (tests/slurm/cluster.sh)")
    if not all(shutil.which(b) for b in SLURM_BINARIES) and not shutil.which("apt-get"):
        pytest.skip("SLURM is not installed and there is no apt-get to install it")
    env = {"SLURM_CONF": cluster("env").stdout.strip().removeprefix("export SLURM_CONF=")}
    if cluster("status").returncode == 0:
        yield env  # somebody else's cluster: use it, leave it running
        return
    # memory is not enforced on the test node: room for every rule's mem_mb; 4 job slots
    started = cluster("start", env={"SLURM_TEST_MEM_MB": "256000", "SLURM_TEST_CPUS": "4"})
    if started.returncode != 0:
        out = started.stdout + started.stderr
        cluster("stop")  # whatever the failed start got running
        if "is not ours" in out:
            pytest.skip(f"another SLURM configuration is set up on this host:\n{out[-1500:]}")
        pytest.fail(f"tests/slurm/cluster.sh start failed:\n{out[-4000:]}")
    try:
        yield env
    finally:
        stopped = cluster("stop")
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr


def slurm_config(tokenizer_dir: Path, calibration: Path) -> dict:
    """A baseline, a bitsandbytes 4-bit arm and a GPTQ arm on one short task."""
    calib = {"path": str(calibration), "num_samples": 8, "seq_len": 64, "seed": 0}
    return {
        "study": "tinyslurm",
        "model": {
            "source": "random-init",
            "path": str(TINY_CONFIG),
            "tokenizer": {"path": str(tokenizer_dir)},
            "dtype": "fp32",
        },
        "arms": {
            "fp32": {"method": "baseline", "dtype": "fp32"},
            "nf4": {
                "method": "bnb-4bit",
                "quant_type": "nf4",
                "compute_dtype": "fp32",
                "dtype": "fp32",
            },
            "gptq": {"method": "gptq", "group_size": 32, "dtype": "fp32", "calibration": calib},
        },
        "tasks": {"demo_capitals": {"limit": 4, "batch_size": 4}},
        "evaluation": {"include_path": "tasks", "max_batch_size": 8},
        "benchmark": {"settings": BENCH_SETTINGS},
    }


def sacct(run_id: str, env: dict) -> list[dict]:
    fields = ["JobID", "Comment", "Partition", "State", "ExitCode", "AllocTRES"]
    out = subprocess.run(
        ["sacct", "-X", "-P", "-n", "-S", "now-1days", "--name", run_id, "-o", ",".join(fields)],
        capture_output=True, text=True, check=True, env={**os.environ, **env},
    ).stdout  # fmt: skip
    return [dict(zip(fields, line.split("|"), strict=True)) for line in out.splitlines() if line]


def test_tiny_study_through_slurm(slurm_cluster, tmp_path, tokenizer_dir, calibration_file):
    config = slurm_config(tokenizer_dir, calibration_file)
    write_config(tmp_path, config)
    env = {
        **slurm_cluster,
        "QS_SLURM_STATUS_INIT_SECONDS": "2",
        "QS_SLURM_GPU_MEM_MB": "1000",
        "QS_SLURM_CPU_MEM_MB": "1000",
    }
    proc = snakemake(tmp_path, "--profile", str(ROOT / "profiles" / "slurm"), env=env)
    check_slurm_run(proc.stdout + proc.stderr, tmp_path, config, slurm_cluster)


def check_slurm_run(out: str, tmp_path: Path, config: dict, slurm_env: dict) -> None:
    run_id = re.search(r"SLURM run ID: (quantstudy_[0-9a-f-]+)", out).group(1)
    study = config["study"]
    assert (tmp_path / "results" / study / "figures" / "score_vs_memory.png").is_file()
    assert (tmp_path / "results" / study / "tables" / "benchmark.csv").is_file()

    # the jobs snakemake ran: every one but the local target `all` must be a SLURM job
    ran = jobs_in(out) - {job("all")}
    arms, tasks = list(config["arms"]), list(config["tasks"])
    gpu = {job("quantize", study=study, arm=a) for a in arms if a != "fp32"}
    gpu |= {job("evaluate", study=study, arm=a, task=t) for a in arms for t in tasks}
    gpu |= {job("benchmark", study=study, arm=a) for a in arms}
    cpu = {
        job(r, study=study)
        for r in ("prepare_model", "aggregate", "aggregate_benchmarks", "report")
    }
    assert gpu | cpu | {job("quantize", study=study, arm="fp32")} <= ran
    # any further rule of the workflow (e.g. compare) is a study-level CPU rule
    cpu |= {j for j in ran if j[0] not in GPU_RULES}

    # slurmdbd records a job's end a moment after squeue has shown it
    deadline = time.monotonic() + 120
    while True:
        rows = sacct(run_id, slurm_env)
        done = [r for r in rows if r["State"] not in ("PENDING", "RUNNING", "COMPLETING")]
        if len(done) >= len(ran) or time.monotonic() > deadline:
            break
        time.sleep(1)
    # each row is one job, named as the plugin does: rule_<rule>_wildcards_<values joined by _>
    by_job = {}
    for row in rows:
        (match,) = [j for j in ran if row["Comment"] in comments(j)] or [None]
        assert match is not None and match not in by_job, (row, sorted(ran))
        by_job[match] = row
    assert set(by_job) == ran, "not every job went through SLURM (or one ran twice)"
    for row in rows:
        assert (row["State"], row["ExitCode"]) == ("COMPLETED", "0:0"), row
    for j in gpu:
        row = by_job[j]
        assert row["Partition"] == "gpu" and "gres/gpu=1" in row["AllocTRES"].split(","), row
    for j in cpu:
        row = by_job[j]
        assert row["Partition"] == "cpu" and "gres/gpu" not in row["AllocTRES"], row

    # inside each GPU job SLURM chose the device: the scripts' GPU lease left it alone
    logs = tmp_path / "logs" / study
    for rule, wc in gpu:
        w = dict(wc)
        log = {
            "quantize": logs / "quantize" / f"{w['arm']}.log",
            "evaluate": logs / "eval" / w["arm"] / f"{w.get('task')}.log",
            "benchmark": logs / "bench" / f"{w['arm']}.log",
        }[rule]
        assert re.search(
            r"CUDA_VISIBLE_DEVICES='\d' set by the scheduler; no lease", log.read_text()
        ), log


def comments(j) -> set[str]:
    """The plugin's --comment for job j (wildcard values in any order: it follows the job's)."""
    rule, wc = j
    values = [v for _, v in wc]
    if not values:
        return {f"rule_{rule}"}
    return {f"rule_{rule}_wildcards_{'_'.join(p)}" for p in itertools.permutations(values)}
