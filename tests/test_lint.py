"""The code stays as the style asks: ruff, snakefmt and Snakemake's own linter find nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON_PATHS = ["quantstudy", "scripts", "tests", "bench", "tasks", "config"]


def run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)


def test_ruff_check_and_format():
    check = run(sys.executable, "-m", "ruff", "check", *PYTHON_PATHS)
    assert check.returncode == 0, check.stdout + check.stderr
    fmt = run(sys.executable, "-m", "ruff", "format", "--check", *PYTHON_PATHS)
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_snakefmt():
    proc = run(sys.executable, "-m", "snakefmt", "--check", "Snakefile", "rules")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_snakemake_lint_has_no_findings():
    for config in ("config.yaml", "config/demo.yaml"):
        proc = run(sys.executable, "-m", "snakemake", "--lint", "--configfile", config)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out
        assert "Lints for" not in out, out
