"""Snakemake reruns exactly what a config change touches, and two studies never mix.

Each case writes a changed copy of the finished tiny study's config to its own file and asks
`snakemake -n` (a dry-run: it changes nothing, so it runs against the shared tiny study) for the
plan, which must be EXACTLY the expected set of (rule, wildcards) jobs. The per-arm and per-task
jobs are spelled out; the study-level jobs (tables, comparisons, figures, report: one job each)
are those of the workflow's rule graph downstream of the changed rules, so that adding such a
rule does not need these tests changed. The second-study test runs for real, so it works on a
private copy of the tiny study.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from tests.conftest import (
    BENCH_SETTINGS,
    ROOT,
    copy_study,
    job,
    jobs_in,
    snakemake,
    write_config,
)

pytestmark = pytest.mark.workflow

STUDY = "tiny"


def tiny(tiny_study: Path) -> dict:
    return yaml.safe_load((tiny_study / "config.yaml").read_text())


def plan(tiny_study: Path, config: dict, tmp_path: Path) -> set:
    """The jobs `snakemake -n` plans for config in the tiny study's workdir."""
    configfile = tmp_path / "changed.yaml"
    configfile.write_text(yaml.safe_dump(config, sort_keys=False))
    proc = snakemake(tiny_study, "-n", "-c1", configfile=configfile)
    return jobs_in(proc.stdout + proc.stderr)


def full_plan(config: dict, workdir: Path) -> set:
    """Every job of a study: the plan in an empty workdir."""
    write_config(workdir, config)
    proc = snakemake(workdir, "-n", "-c1")
    return jobs_in(proc.stdout + proc.stderr)


@pytest.fixture(scope="module")
def shape(tiny_study, tmp_path_factory):
    """The tiny study's jobs and rule graph."""
    config = tiny(tiny_study)
    jobs = full_plan(config, tmp_path_factory.mktemp("empty"))
    dot = snakemake(tiny_study, "--rulegraph").stdout
    names = dict(re.findall(r'^\s*(\d+)\[label = "(\w+)"', dot, re.M))
    edges = {(names[a], names[b]) for a, b in re.findall(r"^\s*(\d+) -> (\d+)", dot, re.M)}
    assert {r for r, _ in jobs} == set(names.values())
    return {"jobs": jobs, "edges": edges}


def after(shape: dict, *rules: str) -> set:
    """The study-level jobs (no wildcard but the study) downstream of rules."""
    reach, todo = set(), list(rules)
    while todo:
        rule = todo.pop()
        for a, b in shape["edges"]:
            if a == rule and b not in reach:
                reach.add(b)
                todo.append(b)
    study_level = {
        (rule, wc)
        for rule, wc in shape["jobs"]
        if {k for k, _ in wc} <= {"study"} and rule != "prepare_model"
    }
    return {(rule, wc) for rule, wc in study_level if rule in reach}


def arm_jobs(arm: str, tasks, study: str = STUDY) -> set:
    """An arm's own jobs: build, evaluate on every task, benchmark."""
    return {
        job("quantize", study=study, arm=arm),
        job("benchmark", study=study, arm=arm),
        *(job("evaluate", study=study, arm=arm, task=t) for t in tasks),
    }


def test_the_study_level_jobs(shape):
    """The rule graph gives what the tests below expect (one job per study-level rule)."""
    assert {job("aggregate", study=STUDY), job("report", study=STUDY), job("all")} <= after(
        shape, "evaluate"
    )
    assert job("aggregate_benchmarks", study=STUDY) in after(shape, "benchmark")
    assert job("aggregate_benchmarks", study=STUDY) not in after(shape, "evaluate")


def test_changing_an_arm_reruns_only_that_arm(tiny_study, tmp_path, shape):
    config = tiny(tiny_study)
    config["arms"]["fp4"]["compute_dtype"] = "bf16"
    expected = arm_jobs("fp4", config["tasks"]) | after(shape, "quantize")
    assert plan(tiny_study, config, tmp_path) == expected


def test_changing_an_arms_calibration_reruns_only_that_arm(tiny_study, tmp_path, shape):
    config = tiny(tiny_study)
    # a new dict: the tiny config's calibration is one YAML anchor shared with the awq arm
    config["arms"]["gptq"]["calibration"] = {
        **config["arms"]["gptq"]["calibration"],
        "num_samples": 4,
    }
    expected = arm_jobs("gptq", config["tasks"]) | after(shape, "quantize")
    assert plan(tiny_study, config, tmp_path) == expected


def test_changing_the_baseline_reruns_what_is_compared_with_it(tiny_study, tmp_path, shape):
    """Every arm's benchmark loads the baseline, and batch_size "auto" tasks take the baseline's
    batch size: those jobs of the other arms rerun too, nothing else of them."""
    config = tiny(tiny_study)
    config["arms"]["fp32"]["dtype"] = "bf16"
    auto = [t for t, spec in config["tasks"].items() if spec["batch_size"] == "auto"]
    assert auto == ["demo_capitals"]
    expected = arm_jobs("fp32", config["tasks"]) | after(shape, "quantize")
    for arm in config["arms"]:
        expected |= {job("benchmark", study=STUDY, arm=arm)}
        expected |= {job("evaluate", study=STUDY, arm=arm, task="demo_capitals")}
    assert plan(tiny_study, config, tmp_path) == expected


def test_adding_an_arm_runs_only_it(tiny_study, tmp_path, shape):
    config = tiny(tiny_study)
    config["arms"]["nf4"] = {"method": "bnb-4bit", "quant_type": "nf4", "dtype": "fp32"}
    expected = arm_jobs("nf4", config["tasks"]) | after(shape, "quantize")
    assert plan(tiny_study, config, tmp_path) == expected


def test_adding_a_task_runs_only_that_task(tiny_study, tmp_path, shape):
    config = tiny(tiny_study)
    config["tasks"]["arc_easy"] = {"limit": 4}  # batch_size auto: the baseline's run first
    expected = {job("evaluate", study=STUDY, arm=arm, task="arc_easy") for arm in config["arms"]}
    assert plan(tiny_study, config, tmp_path) == expected | after(shape, "evaluate")


def test_changing_a_tasks_limit_reruns_only_that_task(tiny_study, tmp_path, shape):
    config = tiny(tiny_study)
    config["tasks"]["demo_passage_qa"]["limit"] -= 1
    expected = {
        job("evaluate", study=STUDY, arm=arm, task="demo_passage_qa") for arm in config["arms"]
    }
    assert plan(tiny_study, config, tmp_path) == expected | after(shape, "evaluate")


def test_changing_the_benchmark_settings_reruns_only_benchmarks(tiny_study, tmp_path, shape):
    config = tiny(tiny_study)
    config["benchmark"]["settings"]["repeats"] += 1
    expected = {job("benchmark", study=STUDY, arm=arm) for arm in config["arms"]}
    assert plan(tiny_study, config, tmp_path) == expected | after(shape, "benchmark")


@pytest.mark.parametrize("change", ["seed", "path"])
def test_changing_the_model_reruns_everything(tiny_study, tmp_path, shape, change):
    config = tiny(tiny_study)
    if change == "seed":
        config["model"]["seed"] += 1
    else:  # the same architecture from another file
        other = tmp_path / "other-model.json"
        shutil.copy(config["model"]["path"], other)
        config["model"]["path"] = str(other)
    planned = plan(tiny_study, config, tmp_path)
    assert planned == shape["jobs"]
    assert job("prepare_model", study=STUDY) in planned
    for arm in config["arms"]:
        assert arm_jobs(arm, config["tasks"]) <= planned


def test_unchanged_config_in_another_file_is_a_no_op(tiny_study, tmp_path):
    assert plan(tiny_study, tiny(tiny_study), tmp_path) == set()


# --- two studies in one workdir ----------------------------------------------------------------


def second_config(first: dict) -> dict:
    """A small second study: same model files, a baseline and one 4-bit arm, one short task."""
    return {
        "study": "tiny2",
        "model": copy.deepcopy(first["model"]),
        "arms": {
            "fp32": {"method": "baseline", "dtype": "fp32"},
            "nf4": {
                "method": "bnb-4bit",
                "quant_type": "nf4",
                "compute_dtype": "fp32",
                "dtype": "fp32",
            },
        },
        "tasks": {"demo_capitals": {"limit": 4, "batch_size": 4}},
        "evaluation": {"include_path": "tasks", "max_batch_size": 8},
        "benchmark": {"settings": BENCH_SETTINGS},
    }


def files(work: Path) -> dict[Path, int]:
    """Every file of the workdir outside .snakemake (Snakemake's own records), with its mtime."""
    return {
        p.relative_to(work): p.stat().st_mtime_ns
        for p in work.rglob("*")
        if p.is_file() and p.relative_to(work).parts[0] != ".snakemake"
    }


@pytest.fixture(scope="module")
def two_studies(tiny_study, tmp_path_factory):
    """A private copy of the tiny study, then a second study run in the same workdir through
    profiles/local with two fake 30 GB GPUs (so its GPU jobs take leases)."""
    work = copy_study(tiny_study, tmp_path_factory.mktemp("two-studies") / "work")
    before = files(work)
    configfile = work / "tiny2.yaml"
    second = second_config(tiny(tiny_study))
    configfile.write_text(yaml.safe_dump(second, sort_keys=False))
    ledger = work.parent / "gpu-ledger"
    env = {
        "QUANTSTUDY_GPUS": "0:30000,1:30000",
        "QUANTSTUDY_GPU_LEDGER": str(ledger),
        "QUANTSTUDY_GPU_POLL": "0.5",
    }
    planned = jobs_in(snakemake(work, "-n", configfile=configfile).stdout)
    run = snakemake(
        work, "--profile", str(ROOT / "profiles" / "local"), "-c2",
        configfile=configfile, env=env,
    )  # fmt: skip
    return {
        "work": work, "before": before, "config": second, "configfile": configfile,
        "planned": planned, "ran": jobs_in(run.stdout + run.stderr), "ledger": ledger,
    }  # fmt: skip


def test_a_second_study_runs_only_its_own_jobs(two_studies, tmp_path):
    expected = full_plan(two_studies["config"], tmp_path / "empty")
    assert all(("study", "tiny2") in wc for rule, wc in expected if rule != "all")
    assert job("prepare_model", study="tiny2") in expected
    assert arm_jobs("nf4", two_studies["config"]["tasks"], "tiny2") <= expected
    assert two_studies["planned"] == expected
    assert two_studies["ran"] == expected


def test_a_second_study_writes_only_under_its_own_name(two_studies, tiny_study):
    work, before = two_studies["work"], two_studies["before"]
    after = files(work)
    assert {p: after[p] for p in before} == before, "the first study's files were touched"
    new = set(after) - set(before) - {Path("tiny2.yaml")}
    assert new and all(p.parts[:2] in {("results", "tiny2"), ("logs", "tiny2")} for p in new), new
    assert (work / "results" / "tiny2" / "tables" / "results.csv").is_file()
    # the first study is still finished, and so is the second
    first = snakemake(work, "-n", "-c1")
    assert "Nothing to be done" in first.stdout + first.stderr
    second = snakemake(work, "-n", "-c1", configfile=two_studies["configfile"])
    assert "Nothing to be done" in second.stdout + second.stderr


def test_local_profile_jobs_take_gpu_leases(two_studies):
    """Through profiles/local, every GPU job's script held a lease (benchmarks an exclusive one)
    and gave it back."""
    logs = two_studies["work"] / "logs" / "tiny2"
    gpu_logs = [
        *(logs / "quantize").glob("*.log"),
        *(logs / "eval").glob("*/*.log"),
        *(logs / "bench").glob("*.log"),
    ]
    assert len(gpu_logs) == 2 + 2 + 2
    for log in gpu_logs:
        text = log.read_text()
        assert "gpu lease: device " in text, log
        assert ("MB exclusive" in text) == (log.parent.name == "bench"), log
    ledger = json.loads((two_studies["ledger"] / "ledger.json").read_text())
    assert ledger["leases"] == []
