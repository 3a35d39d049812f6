"""Nothing silently wrong: weights are checked against their recorded SHA-256 before every load,
every output records the quant-study code that made it, and the report flags a mixture."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import jsonschema
import pytest
import torch

import quantstudy
from quantstudy import benchmark as bm
from quantstudy import compare, evaluate, report
from quantstudy.arms import parse_arm
from quantstudy.loading import load_arm
from quantstudy.provenance import (
    CODE_PATHS,
    WeightsChanged,
    check_weights,
    code_files,
    code_label,
    code_version,
    code_versions,
    mixed_code_warning,
    sha256_file,
)
from quantstudy.quantize import quantize_arm
from tests.conftest import ROOT

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


# --------------------------------------------------------------------------- code version


def git(root: Path, *args: str) -> str:
    cmd = ["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t", *args]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


def copy_code(root: Path, dst: Path) -> Path:
    """The workflow's code files of root, copied to dst (no git there)."""
    for f in code_files(root):
        (dst / f.relative_to(root)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, dst / f.relative_to(root))
    return dst


def test_code_version_of_this_checkout_is_its_head(tmp_path):
    head = git(ROOT, "rev-parse", "HEAD")
    status = git(ROOT, "status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHS)
    version = code_version(ROOT)
    assert version["commit"] == head
    assert version["dirty"] is bool(status)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert version["version"] == pyproject == quantstudy.__version__
    assert code_version() == version  # the running package's folder is this checkout
    # the code's identity is its files: the same files elsewhere, without git, are the same code
    assert (
        fresh_version(copy_code(ROOT, tmp_path / "copy"))["code_sha256"] == (version["code_sha256"])
    )
    assert {
        "quantstudy/provenance.py",
        "rules/evaluate.smk",
        "scripts/evaluate.py",
        "Snakefile",
        "schemas/config.schema.yaml",
    } <= {str(f.relative_to(ROOT)) for f in code_files(ROOT)}


@pytest.fixture
def checkout(tmp_path) -> Path:
    """A git checkout holding a copy of the package and pyproject.toml, committed."""
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "quantstudy", repo / "quantstudy",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    shutil.copy(ROOT / "pyproject.toml", repo / "pyproject.toml")
    (repo / "notes.md").write_text("notes\n")
    git(repo.parent, "init", "-q", str(repo))
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "copy")
    return repo


def fresh_version(root: Path) -> dict:
    code_version.cache_clear()  # once per process in the workflow; a test changes the tree
    try:
        return code_version(root)
    finally:
        code_version.cache_clear()


def test_dirty_means_an_edited_tracked_code_file(checkout):
    head = git(checkout, "rev-parse", "HEAD")
    clean = fresh_version(checkout)
    assert clean["commit"] == head and clean["dirty"] is False
    assert clean["version"] == quantstudy.__version__
    (checkout / "notes.md").write_text("edited notes\n")  # not code
    (checkout / "quantstudy" / "stats.py~").write_text("backup\n")  # not code either
    assert fresh_version(checkout) == clean
    stats = checkout / "quantstudy" / "stats.py"
    original = stats.read_text()
    stats.write_text(original + "# a comment\n")
    edited = fresh_version(checkout)
    assert edited["commit"] == head and edited["dirty"] is True
    assert edited["code_sha256"] != clean["code_sha256"]
    assert code_label(edited).endswith(f"(commit {head[:12]} edited)")
    stats.write_text(original)
    assert fresh_version(checkout) == clean
    (checkout / "quantstudy" / "scratch.py").write_text("x = 1\n")  # untracked: not dirty, ...
    scratch = fresh_version(checkout)
    assert scratch["dirty"] is False and scratch["code_sha256"] != clean["code_sha256"]  # ...code


def test_a_commit_that_changes_no_code_is_the_same_code(checkout):
    before = fresh_version(checkout)
    (checkout / "notes.md").write_text("edited notes\n")
    git(checkout, "commit", "-q", "-am", "docs")
    after = fresh_version(checkout)
    assert after["commit"] != before["commit"]
    assert after["code_sha256"] == before["code_sha256"]
    versions = code_versions({"a.json": {"code_version": before},
                              "b.json": {"code_version": after}})  # fmt: skip
    (label,) = versions
    assert versions[label] == ["a.json", "b.json"]
    assert before["commit"][:12] in label and after["commit"][:12] in label
    assert mixed_code_warning(versions) == ""


def test_no_commit_outside_a_checkout(checkout, tmp_path):
    plain = tmp_path / "plain"
    shutil.copytree(checkout / "quantstudy", plain / "quantstudy")
    version = fresh_version(plain)
    assert version["commit"] is None and version["dirty"] is None
    assert version["version"] == quantstudy.__version__
    assert version["code_sha256"] == fresh_version(checkout)["code_sha256"]
    # a folder inside some other repository is not that repository's code
    assert fresh_version(checkout / "quantstudy")["commit"] is None
    assert code_label(version).endswith("(not from a git checkout)")


def test_no_commit_without_git(checkout, monkeypatch):
    monkeypatch.setenv("PATH", str(checkout))  # no git there
    assert fresh_version(checkout)["commit"] is None


def test_the_json_records_carry_the_code_version(tiny_source, saved_arm):
    version = code_version()
    assert json.loads((tiny_source / "source.json").read_text())["code_version"] == version
    assert json.loads((saved_arm / "quantize.json").read_text())["code_version"] == version
    jsonschema.validate(version, bm.BENCH_SCHEMA["properties"]["code_version"])
    assert "code_version" in bm.BENCH_SCHEMA["required"]


# --------------------------------------------------------------------------- the report


def versioned(commit: str | None, code: str = "c", dirty: bool = False) -> dict:
    return {"version": "0.1.0", "code_sha256": code * 64, "commit": commit, "dirty": dirty}


def test_provenance_flags_outputs_from_different_code():
    old, new = versioned("a" * 40), versioned("b" * 40, code="e", dirty=True)
    quant = {"base": {"method": "baseline", "code_version": old},
             "int8": {"method": "bnb-int8", "code_version": old}}  # fmt: skip
    evals = [{"arm": "base", "task": "t", "code_version": old},
             {"arm": "int8", "task": "t", "code_version": new}]  # fmt: skip
    source = {"source": {"source": "local"}, "code_version": old}
    config = {"arms": {"base": {}, "int8": {}}}
    prov = report.provenance_rows(source, None, quant, evals, [], config, made_by=new)
    code = {r.item: r.value for r in prov.itertuples() if r.section == "code"}
    assert "2 different versions" in code["warning"]
    assert code["outputs made by 0.1.0, code cccccccccccc (commit aaaaaaaaaaaa)"] == (
        "source/source.json, models/base/quantize.json, models/int8/quantize.json, eval/base/t.json"
    )
    assert code["outputs made by 0.1.0, code eeeeeeeeeeee (commit bbbbbbbbbbbb edited)"] == (
        "eval/int8/t.json"
    )
    assert code["tables and report made by"] == code_label(new)
    page = report.provenance_html(prov, "s", "")
    assert page.index("Mixed code versions") < page.index("<h2>model</h2>")


def test_provenance_of_one_code_version_has_no_warning():
    same = versioned("a" * 40)
    quant = {"base": {"code_version": same}}
    prov = report.provenance_rows(None, None, quant, [{"arm": "base", "task": "t",
                                  "code_version": same}], [], {"arms": {"base": {}}})  # fmt: skip
    code = {r.item: r.value for r in prov.itertuples() if r.section == "code"}
    assert "warning" not in code
    assert (
        code["outputs made by 0.1.0, code cccccccccccc (commit aaaaaaaaaaaa)"] == "every output (2)"
    )
    assert "Mixed code versions" not in report.provenance_html(prov, "s", "")


def test_an_output_without_a_code_version_counts_as_another_version():
    quant = {"base": {"code_version": versioned("a" * 40)}, "old": {}}
    prov = report.provenance_rows(None, None, quant, [], [], {"arms": {"base": {}, "old": {}}})
    code = {r.item: r.value for r in prov.itertuples() if r.section == "code"}
    assert "warning" in code and code["outputs made by not recorded"] == "models/old/quantize.json"


# --------------------------------------------------------------------------- the decision table


def test_a_failed_job_s_reason_quotes_its_error(tmp_path):
    """The failure record of a job stopped by changed weights says so in the decision table's
    words: the stage, the error's type and message, the log."""
    from quantstudy import records
    from quantstudy.provenance import WeightsChanged

    out, log = tmp_path / "eval" / "a" / "t.json", tmp_path / "t.log"
    out.parent.mkdir(parents=True)
    message = (
        "the weights in results/s/models/a are not the ones quantize.json lists: "
        f"results/s/models/a/model.safetensors: expected sha256 {'e' * 64}, found {'f' * 64}"
    )
    with records.recording_failure("evaluate", out, arm="a", task="t", log=log):
        raise WeightsChanged(message)
    reason = records.read(out)["reason"]
    assert reason == f"evaluate failed: WeightsChanged: {message} (log: {log})"


def test_the_decision_page_warns_of_mixed_code(tmp_path):
    from tests.test_compare import ANALYSIS, ARMS, TASKS, make_study

    files = make_study(tmp_path)
    out = {k: tmp_path / f"{k}.out" for k in
           ("scores", "comparisons", "decision", "decision_html", "summary", "summary_md")}  # fmt: skip

    def run() -> str:
        compare.run(files["samples"], files["evals"], files["models"], files["bench"], ARMS,
                    TASKS, "fp32", ANALYSIS, "synthetic", out)  # fmt: skip
        return out["decision_html"].read_text()

    assert "Warning" not in run()  # one code version
    edited = files["evals"][0]
    edited.write_text(json.dumps(json.loads(edited.read_text()) | {"code_version": versioned("a")}))
    assert "Warning: these outputs were made by 2 different versions" in run()
