"""The largest-batch search in a child process: some kernels (bitsandbytes int8 at large batches
on the H100) end the process on a CUDA error instead of raising, and a search run in the job's
own process would lose the whole job. The child is a fresh ``python -c`` that imports this
module, not a multiprocessing spawn: spawn re-runs the parent's __main__, which under Snakemake
is the job script itself."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from .backend import load_model, vocab_size
from .modes import mode_spec
from .search import largest_batch_for, next_probe
from .settings import kernels, settings_at_batch
from .timing import Timer

log = logging.getLogger(__name__)

PACKAGE_ROOT = Path(__file__).resolve().parents[2]
"""The folder holding the `quantstudy` package: the child process imports it from there."""


def run_child(arm_dir: str, mode: str, settings, device: str, progress: str, out: str):
    """The child process of `largest_batch_isolated`: load the arm, search, write the result."""
    device_ = torch.device(device)
    model, _, _ = load_model(arm_dir, device_, kernels(settings, device_))
    Path(progress + ".loaded").touch()
    spec = mode_spec(mode, settings, device_)

    def record(probe: dict[str, Any]) -> None:
        with open(progress, "a") as f:
            f.write(json.dumps(probe) + "\n")

    result = largest_batch_for(
        "arm", model, spec, settings, vocab_size(model), Timer(device_), device_, record
    )
    Path(out).write_text(json.dumps(result, default=str))


def _last_words(stderr: str) -> str:
    """The last line a process wrote to stderr (at most 300 characters)."""
    return (stderr.strip().splitlines() or [""])[-1][:300]


def _search_child(arm_dir, mode: str, settings, device: torch.device):
    """Run `run_child` in a fresh process: (exit code, result or None, probes, stderr, whether the
    arm had loaded)."""
    with tempfile.TemporaryDirectory() as tmp:
        progress, out = Path(tmp) / "probes.jsonl", Path(tmp) / "result.json"
        args = {
            "arm_dir": str(arm_dir),
            "mode": mode,
            "settings": settings,
            "device": str(device),
            "progress": str(progress),
            "out": str(out),
        }
        (Path(tmp) / "args.json").write_text(json.dumps(args, default=str))
        code = (
            "import json, sys; from quantstudy.benchmark.isolation import run_child as run; "
            "run(**json.load(open(sys.argv[1])))"
        )
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(PACKAGE_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
        )}  # fmt: skip
        child = subprocess.run(
            [sys.executable, "-c", code, str(Path(tmp) / "args.json")],
            env=env,
            capture_output=True,
            text=True,
        )
        result = json.loads(out.read_text()) if child.returncode == 0 and out.exists() else None
        probes = (
            [json.loads(x) for x in progress.read_text().splitlines()] if progress.exists() else []
        )
        loaded = Path(f"{progress}.loaded").exists()
    return child.returncode, result, probes, child.stderr, loaded


def largest_batch_isolated(arm_dir, mode: str, settings, device: torch.device) -> dict[str, Any]:
    """The largest-batch search in a child process, so a kernel that ends the process (instead of
    raising) is recorded as the batch where it happened rather than losing the whole job.

    When the process dies after some batches ran (on the H100 bitsandbytes' int8 kernel ends it
    at batch 2048 with memory to spare), the largest batch that ran is the answer, as for an
    out-of-memory: a second child measures its throughput, and the result says what stopped the
    search (`stopped_by`). Only a search where no batch ran, or whose largest batch then fails
    too, is unsupported.

    The child is a fresh `python -c` that imports this module, not a multiprocessing spawn: spawn
    re-runs the parent's __main__, which under Snakemake is the job script itself.
    """
    code, result, probes, stderr, loaded = _search_child(arm_dir, mode, settings, device)
    if result is not None:
        return result
    log.warning("largest-batch search process failed:\n%s", stderr[-3000:])
    fitted = [p["batch_size"] for p in probes if p["fits"]]
    tried = sorted(p["batch_size"] for p in probes)
    sec = settings["largest_batch"]
    where = (
        f"at batch {next_probe(probes, sec['start'], sec['limit'])}"
        if loaded
        else "loading the arm"
    )
    died = (
        f"the search process ended with exit code {code} {where} after probing batches {tried}; "
        f"largest that fitted: {max(fitted) if fitted else None}; last words: "
        f"{_last_words(stderr)!r}"
    )
    if fitted:
        found = max(fitted)
        code2, again, _, stderr2, _ = _search_child(
            arm_dir, mode, settings_at_batch(settings, found), device
        )
        if again is not None and again.get("supported") and again.get("batch_size") == found:
            again.update(
                limit=sec["limit"],
                hit_limit=False,
                probes=probes,
                stopped_by={"exit_code": code, "reason": died},
            )
            return again
        why = (again or {}).get("reason") or _last_words(stderr2)
        died += f"; batch {found} alone then failed too (exit code {code2}): {why}"
    return {
        "supported": False,
        "reason": died,
        "batch_size": max(fitted) if fitted else 0,
        "limit": sec["limit"],
        "probes": probes,
    }
