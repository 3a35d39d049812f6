"""The whole workflow, end to end, through real Snakemake on a tiny random model.

One tiny study covers every method (bnb on CPU, GPTQ and AWQ on CPU) and both demo tasks; the
tests then read its outputs, and check what bad configs and failing arms do.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from quantstudy.provenance import sha256_file
from tests.conftest import (
    LIMITS,
    ROOT,
    break_save,
    copy_study,
    job,
    jobs_in,
    snakemake,
    tiny_config,
    write_config,
)

pytestmark = pytest.mark.workflow


def results(work: Path) -> Path:
    return work / "results" / "tiny"


def read_samples(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_arm_is_built_and_verified(tiny_study):
    config = yaml.safe_load((tiny_study / "config.yaml").read_text())
    for arm, spec in config["arms"].items():
        rec = json.loads((results(tiny_study) / "models" / arm / "quantize.json").read_text())
        assert rec["method"] == spec["method"]
        if spec["method"] == "gguf":
            # llama.cpp quantizes the 14 linear layers and both embedding matrices
            assert rec["verified"]["quantized_modules"] == 16
            assert rec["verified"]["file_type"] == f"MOSTLY_{spec['quant_type']}"
            assert rec["verified"]["probe_top1_agrees"] in (True, False)
            assert rec["reload_probe_rel_diff"] is None  # no in-memory model to compare with
        else:
            assert rec["verified"]["quantized_modules"] == (
                0 if spec["method"] == "baseline" else 14
            )
            assert rec["reload_probe_rel_diff"] <= 1e-2
        assert rec["device"]["used"] == "cpu"
        # the 4-bit arms ran bitsandbytes' reference CPU path, whatever this CPU has
        four_bit = "reference" if spec["method"] == "bnb-4bit" else None
        assert rec["device"]["bnb_cpu_path"] == four_bit
        for task in LIMITS:
            summary = json.loads((results(tiny_study) / "eval" / arm / f"{task}.json").read_text())
            assert summary["device"]["bnb_cpu_path"] == four_bit
            assert summary["device"]["cpu_capability"] == rec["device"]["cpu_capability"]


def test_samples_have_one_line_per_example_and_pair_across_arms(tiny_study):
    config = yaml.safe_load((tiny_study / "config.yaml").read_text())
    for task, limit in LIMITS.items():
        keys = None
        for arm in config["arms"]:
            samples = read_samples(results(tiny_study) / "eval" / arm / f"{task}.samples.jsonl")
            assert len(samples) == limit, (arm, task)
            arm_keys = [(s["doc_id"], s["doc_hash"]) for s in samples]
            assert len(set(arm_keys)) == limit
            keys = keys or arm_keys
            assert arm_keys == keys, "arms saw different items"
            # the prompt, for the failure examples: the context of the item's first request
            assert all(s["prompt"].endswith(("Answer:", "A:")) for s in samples), (arm, task)
            summary = json.loads((results(tiny_study) / "eval" / arm / f"{task}.json").read_text())
            metric = "acc" if task == "demo_capitals" else "f1"
            per_example = [s["metrics"][metric] for s in samples]
            assert all(0.0 <= v <= 1.0 for v in per_example)
            mean = sum(per_example) / len(per_example)
            assert summary["results"][task][f"{metric},none"] == pytest.approx(mean)


def test_auto_batch_size_is_the_baselines_for_every_arm(tiny_study):
    config = yaml.safe_load((tiny_study / "config.yaml").read_text())
    used = {
        arm: json.loads((results(tiny_study) / "eval" / arm / "demo_capitals.json").read_text())[
            "batch_size_used"
        ]
        for arm in config["arms"]
    }
    assert used["fp32"] == 8  # the CPU never runs out of memory: lm-eval settles on the cap
    assert set(used.values()) == {8}
    fixed = {
        json.loads((results(tiny_study) / "eval" / arm / "demo_passage_qa.json").read_text())[
            "batch_size_used"
        ]
        for arm in config["arms"]
    }
    assert fixed == {4}


def test_tables_hold_every_arm_task_and_metric(tiny_study):
    table = pd.read_csv(results(tiny_study) / "tables" / "results.csv")
    config = yaml.safe_load((tiny_study / "config.yaml").read_text())
    expected = {
        (arm, task, metric)
        for arm in config["arms"]
        for task, metrics in {
            "demo_capitals": ("acc", "acc_norm"),
            "demo_passage_qa": ("em", "f1"),
        }.items()
        for metric in metrics
    }
    assert set(zip(table.arm, table.task, table.metric)) == expected
    assert table["value"].between(0, 1).all()
    assert (table.loc[table.task == "demo_capitals", "n"] == LIMITS["demo_capitals"]).all()
    memory = pd.read_csv(results(tiny_study) / "tables" / "memory.csv").set_index("arm")
    assert memory.loc["fp32", "disk_vs_baseline"] == 1.0
    for arm in config["arms"]:
        rec = json.loads((results(tiny_study) / "models" / arm / "quantize.json").read_text())
        assert memory.loc[arm, "disk_bytes"] == rec["disk_bytes"]
        assert memory.loc[arm, "memory_bytes"] == rec["memory_bytes"]["total"]
    # 4-bit linears are packed two weights to a byte: the 4-bit arms hold fewer bytes
    assert (
        memory.loc["nf4_dq", "memory_bytes"]
        < memory.loc["int8", "memory_bytes"]
        < memory.loc["fp32", "memory_bytes"]
    )


def test_report_has_tables_and_figure(tiny_study):
    figure = results(tiny_study) / "figures" / "score_vs_memory.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = pd.read_csv(figure.with_suffix(".csv"))
    assert set(data["arm"]) == set(yaml.safe_load((tiny_study / "config.yaml").read_text())["arms"])
    html = (tiny_study / "report.html").read_text()
    for name in ("score_vs_memory.png", "results.csv", "memory.csv"):
        assert name in html


def test_rerun_is_a_no_op(tiny_study):
    proc = snakemake(tiny_study, "-n", "-c1")
    assert "Nothing to be done" in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "mutate, words",
    [
        (lambda c: c["arms"]["nf4_dq"].update(method="bnb-5bit"), "['arms']['nf4_dq']['method']"),
        (lambda c: c["arms"]["fp4"].update(quant_type="nf5"), "'nf5' is not one of ['nf4', 'fp4']"),
        (lambda c: c["tasks"].update(x={"batch_size": 0}), "['tasks']['x']['batch_size']"),
        (lambda c: c.pop("tasks"), "'tasks' is a required property"),
        (lambda c: c["arms"].update({"a/b": {"method": "baseline"}}), "'a/b' does not match"),
    ],
)
def test_bad_config_stops_before_any_job(tmp_path, tokenizer_dir, calibration_file, mutate, words):
    config = tiny_config(tokenizer_dir, calibration_file)
    mutate(config)
    write_config(tmp_path, config)
    proc = snakemake(tmp_path, "-c1", check=False)
    assert proc.returncode != 0
    assert words in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()


def mtimes(work: Path, skip: tuple[str, ...] = ()) -> dict[Path, int]:
    """mtime of every file under results/, but those in folders named in skip."""
    return {
        p: p.stat().st_mtime_ns
        for p in results(work).rglob("*")
        if p.is_file() and p.parent.name not in skip
    }


ANALYSIS = {"aggregate", "aggregate_benchmarks", "compare", "analyse_failures", "report"}


def test_a_failing_arm_is_reported_and_retried_by_the_next_run(tiny_study, tmp_path):
    """One run: the arm that fails to build is shown with its reason while every other job and
    the report finish, and no finished output is touched. The next plain run retries it."""
    work = copy_study(tiny_study, tmp_path / "work")
    config = yaml.safe_load((work / "config.yaml").read_text())
    config["arms"]["int8_b"] = {**config["arms"]["int8"], "threshold": 5.0}
    write_config(work, config)
    before = mtimes(work, skip=("tables", "report", "figures"))
    snakemake(
        work, "-c1", env=break_save(tmp_path, "int8_b")
    )  # the run succeeds: no --keep-going needed

    arm_dir = results(work) / "models" / "int8_b"
    failure = json.loads((arm_dir / "quantize.json").read_text())
    assert failure["status"] == "failed" and failure["stage"] == "quantize"
    assert "RuntimeError: injected: the disk is full" in failure["reason"]
    assert [p.name for p in arm_dir.iterdir() if not p.name.startswith(".")] == ["quantize.json"]
    for task in LIMITS:  # its evaluations recorded at once that they could not run
        ev = json.loads((results(work) / "eval" / "int8_b" / f"{task}.json").read_text())
        assert ev["upstream"] and ev["reason"].startswith("not run: its quantize job failed")
    decision = pd.read_csv(results(work) / "tables" / "decision.csv").set_index("arm")
    assert decision.loc["int8_b", "status"] == f"missing: {failure['reason']}"
    assert (decision.drop(index="int8_b")["status"] == "ok").all()
    assert "injected: the disk is full" in (results(work) / "report/decision.html").read_text()
    snakemake(work, "--report", str(tmp_path / "report.html"))  # the report of this run builds
    assert "int8_b" in (tmp_path / "report.html").read_text()
    assert "int8_b" not in set(pd.read_csv(results(work) / "tables" / "results.csv")["arm"])
    assert {p: t for p, t in mtimes(work).items() if p in before} == before

    # the next plain run, the cause gone, builds the arm and everything after it again
    plan = jobs_in(snakemake(work, "-n", "-c1").stdout)
    assert {r for r, _ in plan} == {"quantize", "evaluate", "benchmark", "all"} | ANALYSIS
    assert {dict(w)["arm"] for r, w in plan if r not in ANALYSIS | {"all"}} == {"int8_b"}
    snakemake(work, "-c1")
    record = json.loads((arm_dir / "quantize.json").read_text())
    assert record["verified"]["quantized_modules"] == 14
    decision = pd.read_csv(results(work) / "tables" / "decision.csv").set_index("arm")
    assert decision.loc["int8_b", "status"] == "ok"
    assert "Nothing to be done" in snakemake(work, "-n", "-c1").stdout


def test_a_job_killed_midway_is_rerun_by_the_next_run(tiny_study, tmp_path):
    """A job that dies without a word (SIGKILL) leaves nothing behind; the next plain run redoes
    it, and the tables then hold every arm at the config's new limit."""
    work = copy_study(tiny_study, tmp_path / "work")
    config = yaml.safe_load((work / "config.yaml").read_text())
    config["tasks"]["demo_capitals"]["limit"] = 10
    write_config(work, config)
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(work),
           "--configfile", str(work / "config.yaml"), "-c1", "--keep-going"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    run = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    killed = None
    deadline = time.monotonic() + 600
    while killed is None and time.monotonic() < deadline and run.poll() is None:
        for pid in os.listdir("/proc"):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except (OSError, ValueError):
                continue
            if any(a.endswith(b".evaluate.py") for a in argv):
                time.sleep(1)  # let it load the model
                os.kill(int(pid), signal.SIGKILL)
                killed = int(pid)
                break
        time.sleep(0.2)
    output = run.communicate(timeout=1200)[0].decode()
    assert killed is not None and run.returncode != 0, output[-3000:]
    # which evaluation died: the one whose output is missing
    missing = [(a, t) for a in config["arms"] for t in LIMITS
               if not (results(work) / "eval" / a / f"{t}.json").exists()]  # fmt: skip
    assert len(missing) == 1, missing
    plan = jobs_in(snakemake(work, "-n", "-c1").stdout)
    arm, task = missing[0]
    assert job("evaluate", study="tiny", arm=arm, task=task) in plan
    snakemake(work, "-c1")
    table = pd.read_csv(results(work) / "tables" / "results.csv")
    capitals = table[table["task"] == "demo_capitals"]
    assert set(capitals["arm"]) == set(config["arms"]) and set(capitals["n"]) == {10}
    assert "Nothing to be done" in snakemake(work, "-n", "-c1").stdout


# A GPU out-of-memory, which this CPU cannot have: injected into the job's process by a
# sitecustomize that raises torch's own OutOfMemoryError for any forward of more than 2 rows.
_OOM_ABOVE_2 = """\
import torch
_forward = torch.nn.Embedding.forward
def forward(self, ids):
    if ids.dim() == 2 and ids.shape[0] > 2:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    return _forward(self, ids)
torch.nn.Embedding.forward = forward
"""


def test_a_retry_after_an_out_of_memory_halves_the_batch(tiny_study, tmp_path):
    """`--retries`: the evaluate job's second attempt runs at half the batch, says so in its JSON,
    and the decision table marks the arm whose batch then differs from the baseline's."""
    work = copy_study(tiny_study, tmp_path / "work")
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(_OOM_ABOVE_2)
    target = "results/tiny/eval/fp4/demo_passage_qa.json"  # batch_size 4 in the tiny study
    pythonpath = os.pathsep.join(filter(None, [str(inject), os.environ.get("PYTHONPATH")]))
    snakemake(work, "-c1", "--retries", "1", "--forcerun", target, "--", target,
              env={"PYTHONPATH": pythonpath})  # fmt: skip
    summary = json.loads((work / target).read_text())
    assert summary["batch_size_configured"] == 4 and summary["batch_halvings"] == 1
    assert summary["batch_size_used"] == 2
    samples = read_samples(work / target.replace(".json", ".samples.jsonl"))
    assert len(samples) == LIMITS["demo_passage_qa"]
    (earlier,) = summary["earlier_attempts"]  # Snakemake deleted attempt 1's log; this remains
    assert earlier["attempt"] == 1 and earlier["halvings"] == 0 and earlier["out_of_memory"]
    assert "CUDA out of memory" in earlier["error"]
    log = (work / "logs/tiny/eval/fp4/demo_passage_qa.log").read_text()
    assert "attempt 2, batch halvings 1" in log and "halved 1 time(s)" in log
    snakemake(work, "-c1", "--", "results/tiny/tables/decision.csv")
    decision = pd.read_csv(results(work) / "tables" / "decision.csv").set_index("arm")
    assert decision.loc["fp4", "caveat"] == (
        "demo_passage_qa ran at batch 2 (halved 1× after an out-of-memory), the baseline at 4"
    )
    assert decision.drop(index="fp4")["caveat"].isna().all()


def test_changed_weights_stop_evaluate_and_mark_the_arm(tiny_study, tmp_path):
    """A byte flipped in a saved arm (its mtime kept, as a silent corruption would): the arm's
    evaluate job, rerun, stops before building a model, naming the file and both digests, and
    records the failure; the decision table shows why that evaluation is missing."""
    work = copy_study(tiny_study, tmp_path / "work")
    weights = results(work) / "models" / "int8" / "model.safetensors"
    recorded = json.loads((weights.parent / "quantize.json").read_text())["sha256"]
    stat = weights.stat()
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    target = "results/tiny/eval/int8/demo_passage_qa.json"
    snakemake(work, "-c1", "--forcerun", target, "--", target)
    failure = json.loads((work / target).read_text())
    assert failure["status"] == "failed" and not failure["upstream"]
    log = (work / "logs/tiny/eval/int8/demo_passage_qa.log").read_text()
    assert (
        f"WeightsChanged: the weights in results/tiny/models/int8 are not the ones quantize.json "
        f"lists: results/tiny/models/int8/model.safetensors: expected sha256 "
        f"{recorded['model.safetensors']}, found {sha256_file(weights)}"
    ) in log
    snakemake(work, "-c1", "--", "results/tiny/tables/decision.csv")
    decision = pd.read_csv(results(work) / "tables" / "decision.csv").set_index("arm")
    status = decision.loc["int8", "status"]
    assert status.startswith(
        "incomplete: demo_passage_qa evaluate failed: WeightsChanged: the weights in "
        "results/tiny/models/int8 are not the ones quantize.json lists"
    ), status
    assert status.endswith("(log: logs/tiny/eval/int8/demo_passage_qa.log)")
    assert decision.loc["int8", "verdict:demo_passage_qa"] == "missing"
    assert (decision.drop(index="int8")["status"] == "ok").all()


def test_benchmark_table_has_every_arm_and_mode(tiny_study):
    table = pd.read_csv(results(tiny_study) / "tables" / "benchmark.csv")
    config = yaml.safe_load((tiny_study / "config.yaml").read_text())
    assert set(table["arm"]) == set(config["arms"])
    assert set(table["device_kind"]) == {"cpu"}
    for arm in config["arms"]:
        rows = table[(table.arm == arm) & table.supported]
        gguf = config["arms"][arm]["method"] == "gguf"
        # llama.cpp runs its own graph, one sequence at a time: eager and batch 1 only
        assert set(rows["mode"]) == ({"eager"} if gguf else {"eager", "static"})
        throughput = rows[rows.scenario == "throughput"]
        assert sorted(set(throughput["batch_size"])) == ([1] if gguf else [1, 2])
        prefill = rows[rows.scenario == "prefill"]
        assert sorted(set(prefill["prompt_length"])) == [8, 16]
        bench = json.loads((results(tiny_study) / "bench" / f"{arm}.json").read_text())
        decode = bench["modes"]["eager"]["decode"]
        row = rows[(rows.scenario == "decode") & (rows["mode"] == "eager")].iloc[0]
        assert row["median"] == pytest.approx(decode["arm"]["ms_per_token"]["median"])
        if arm == "fp32":
            assert bench["is_baseline"] and bench["models"]["baseline"] is None
        else:
            base = decode["baseline"]["ms_per_token"]["median"]
            assert row["ratio_to_baseline"] == pytest.approx(
                decode["arm"]["ms_per_token"]["median"] / base
            )
