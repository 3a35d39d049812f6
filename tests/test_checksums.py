"""Nothing silently wrong: weights are checked against their recorded SHA-256 before every load,
every output records the quant-study code that made it, and the report flags a mixture."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from quantstudy import benchmark as bm
from quantstudy import compare, evaluate
from quantstudy.arms import parse_arm
from quantstudy.loading import load_arm
from quantstudy.provenance import (
    WeightsChanged,
    check_weights,
    sha256_file,
)
from quantstudy.quantize import quantize_arm

SMALL_BENCH = {
    "warmup": 1,
    "repeats": 1,
    "prefill": {"prompt_lengths": [8]},
    "decode": {"prompt_length": 8, "new_tokens": 2},
    "throughput": {"batch_sizes": [1], "prompt_length": 8, "new_tokens": 2},
    "largest_batch": {"modes": []},
    "bandwidth": {"bytes": 1 << 20, "warmup": 1, "repeats": 1},
}


@pytest.fixture(scope="module")
def saved_arm(tiny_source, tmp_path_factory) -> Path:
    """A baseline arm of the tiny model, built and saved as the quantize rule does."""
    out = tmp_path_factory.mktemp("arm") / "fp32"
    quantize_arm(parse_arm("fp32", {"method": "baseline", "dtype": "fp32"}), tiny_source, out,
                 device="cpu")  # fmt: skip
    return out


def copy_of(directory: Path, dst: Path) -> Path:
    return Path(shutil.copytree(directory, dst))


def flip_a_byte(path: Path) -> None:
    """Flip one bit of one byte in the middle of the file (its tensor data, not its header)."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def recorded(directory: Path, name: str = "model.safetensors", record: str = "quantize.json"):
    return json.loads((directory / record).read_text())["sha256"][name]


@pytest.fixture
def no_model_is_built(monkeypatch):
    """Any attempt to build a model from saved weights fails the test."""
    from transformers import AutoModelForCausalLM

    def refuse(*args, **kwargs):
        raise AssertionError("a model was built from weights that should have been refused")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", refuse)


# --------------------------------------------------------------------------- saved arms


def test_an_intact_arm_passes_its_check_and_loads(saved_arm):
    sha = json.loads((saved_arm / "quantize.json").read_text())["sha256"]
    assert check_weights(saved_arm) == sha == {"model.safetensors": sha256_file(
        saved_arm / "model.safetensors")}  # fmt: skip
    assert load_arm(saved_arm, "cpu") is not None


def test_a_flipped_byte_stops_load_arm_naming_file_and_digests(saved_arm, tmp_path):
    arm = copy_of(saved_arm, tmp_path / "fp32")
    weights = arm / "model.safetensors"
    flip_a_byte(weights)
    with pytest.raises(WeightsChanged) as error:
        load_arm(arm, "cpu")
    message = str(error.value)
    assert f"{weights}: expected sha256 {recorded(arm)}, found {sha256_file(weights)}" in message
    assert "quantize.json" in message


def test_evaluate_and_benchmark_refuse_changed_weights_before_building(
    saved_arm, tmp_path, no_model_is_built
):
    arm = copy_of(saved_arm, tmp_path / "fp32")
    flip_a_byte(arm / "model.safetensors")
    with pytest.raises(
        WeightsChanged, match=re.escape(f"{arm / 'model.safetensors'}: expected sha256")
    ):
        evaluate.load_model(arm, "cpu")
    with pytest.raises(
        WeightsChanged, match=re.escape(f"{arm / 'model.safetensors'}: expected sha256")
    ):
        bm.load_model(arm, torch.device("cpu"))


def test_benchmark_checks_the_baseline_too(saved_arm, tmp_path, no_model_is_built):
    arm = copy_of(saved_arm, tmp_path / "arm")
    baseline = copy_of(saved_arm, tmp_path / "baseline")
    flip_a_byte(baseline / "model.safetensors")
    with pytest.raises(
        WeightsChanged, match=re.escape(f"{baseline / 'model.safetensors'}: expected")
    ):
        bm.run_benchmark(arm, baseline, SMALL_BENCH, device="cpu")


def test_a_missing_weight_file_is_named(saved_arm, tmp_path):
    arm = copy_of(saved_arm, tmp_path / "fp32")
    (arm / "model.safetensors").rename(arm / "model.safetensors.moved")
    with pytest.raises(WeightsChanged) as error:
        load_arm(arm, "cpu")
    assert f"{arm / 'model.safetensors'}: missing (expected sha256 {recorded(arm)})" in str(
        error.value
    )


def test_an_unlisted_weight_file_is_named(saved_arm, tmp_path):
    arm = copy_of(saved_arm, tmp_path / "fp32")
    shutil.copy(arm / "model.safetensors", arm / "extra.safetensors")
    with pytest.raises(
        WeightsChanged, match=re.escape(f"{arm / 'extra.safetensors'}: not listed in")
    ):
        load_arm(arm, "cpu")


def test_a_directory_without_a_record_loads_unchecked_and_check_false_skips(saved_arm, tmp_path):
    arm = copy_of(saved_arm, tmp_path / "fp32")
    flip_a_byte(arm / "model.safetensors")
    assert load_arm(arm, "cpu", check=False) is not None  # a caller that checked already
    (arm / "quantize.json").unlink()
    assert load_arm(arm, "cpu") is not None  # not an arm the workflow saved


# --------------------------------------------------------------------------- the source


def tree(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(directory)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in directory.rglob("*") if p.is_file()}  # fmt: skip


def test_a_changed_source_stops_quantize_before_writing(tiny_source, tmp_path, no_model_is_built):
    source = copy_of(tiny_source, tmp_path / "source")
    weights = source / "model.safetensors"
    flip_a_byte(weights)
    arm = parse_arm("fp32", {"method": "baseline", "dtype": "fp32"})
    fresh = tmp_path / "models" / "fresh"
    with pytest.raises(WeightsChanged) as error:
        quantize_arm(arm, source, fresh, device="cpu")
    expected = recorded(source, record="source.json")
    assert f"{weights}: expected sha256 {expected}, found {sha256_file(weights)}" in str(
        error.value
    )
    assert "source.json" in str(error.value)
    assert not fresh.exists()
    existing = tmp_path / "models" / "existing"
    existing.mkdir(parents=True)
    (existing / "quantize.json").write_text("{}\n")
    before = tree(existing)
    with pytest.raises(WeightsChanged):
        quantize_arm(arm, source, existing, device="cpu")
    assert tree(existing) == before


# --------------------------------------------------------------------------- the decision table

TRACEBACK = """\
2026-01-01 00:00:00 quantstudy.scripting ERROR job failed
Traceback (most recent call last):
  File "scripts/evaluate.py", line 32, in <module>
    evaluate(
quantstudy.provenance.WeightsChanged: the weights in results/s/models/a are not the ones \
quantize.json lists: results/s/models/a/model.safetensors: expected sha256 {e}, found {f}
"""


def test_a_failed_job_s_reason_quotes_its_error(tmp_path):
    log = tmp_path / "logs" / "s" / "eval" / "a" / "t.log"
    log.parent.mkdir(parents=True)
    log.write_text("attempt 1\n" + TRACEBACK.format(e="e" * 64, f="f" * 64))
    config = {"arms": {"base": {}, "a": {}}, "tasks": {"t": {"batch_size": 8}},
              "benchmark": {"enabled": False}}  # fmt: skip
    (reason,) = [m["reason"] for m in compare.missing_outputs("s", config, "base", tmp_path)]
    assert reason.startswith("evaluation failed: WeightsChanged: the weights in results/s/models/a")
    assert reason.endswith("(log: logs/s/eval/a/t.log)")
    assert len(reason) < compare.ERROR_CHARS + 60
    log.write_text("killed\n")  # no traceback: the reason stays as it was
    assert compare.last_error(log) is None
    (reason,) = [m["reason"] for m in compare.missing_outputs("s", config, "base", tmp_path)]
    assert reason == "evaluation failed (log: logs/s/eval/a/t.log)"
