"""Tests of quantstudy.compare: loading per-example records, orientation, speed, the decision."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from quantstudy import aggregate, compare, policy, records, report, stats
from quantstudy.benchmark.record import SCHEMA_ID
from quantstudy.study import Analysis

# --------------------------------------------------------------------------- builders

ARMS = {
    "fp32": {"method": "baseline", "dtype": "fp32"},
    "same": {"method": "bnb-int8", "dtype": "fp32"},
    "bad": {"method": "bnb-4bit", "quant_type": "fp4", "double_quant": False, "compute_dtype": "fp32"},
    "small": {"method": "bnb-4bit", "quant_type": "nf4", "double_quant": True, "compute_dtype": "fp32"},
    "gone": {"method": "gptq", "group_size": 48},
}  # fmt: skip
MEMORY = {"fp32": 4000, "same": 2000, "bad": 900, "small": 1000}
TASKS = ["qa", "mc"]
N = 400


def outcomes(seed: int = 0) -> dict[tuple[str, str], dict[str, np.ndarray]]:
    """Per-example scores: `same` and `small` equal to the baseline, `bad` 40% of items wrong."""
    rng = np.random.default_rng(seed)
    out = {}
    for task in TASKS:
        base = (rng.random(N) < 0.7).astype(float)
        f1 = np.where(base == 1, 1.0, rng.random(N).round(3))
        worse = base.copy()
        worse[rng.random(N) < 0.4] = 0.0
        for arm, acc in (("fp32", base), ("same", base), ("small", base), ("bad", worse)):
            metrics = {"acc": acc} if task == "mc" else {"em": acc, "f1": np.maximum(acc, f1 * acc)}
            out[(arm, task)] = metrics
    return out


CODE_VERSION = {"version": "0.1.0", "code_sha256": "d" * 64, "commit": None, "dirty": None}
"""The code version every synthetic record carries (one version: no mixed-code warning)."""


def _stat(v: float) -> dict:
    return {"median": v, "min": 0.9 * v, "max": 1.1 * v, "n": 3, "samples": [0.9 * v, v, 1.1 * v]}


def _result(**values) -> dict:
    """One model's summary in a scenario (schemas/benchmark.schema.yaml's model_result)."""
    return {**values, "memory": None, "oom": False, "first_call_s": None, "warmup": 1,
            "repeats": 3}  # fmt: skip


def _model(arm: str) -> dict:
    """A loaded model's record (the schema's model)."""
    fp = {"parameters_bytes": MEMORY[arm], "buffers_bytes": 0, "quant_state_bytes": 0,
          "total_bytes": MEMORY[arm]}  # fmt: skip
    return {"name": arm, "dir": f"models/{arm}", "method": ARMS[arm]["method"], "quantize": None,
            "dtype": "float32", "load_s": 1.0, "disk_bytes": MEMORY[arm] + 10,
            "weights_disk_bytes": MEMORY[arm], "footprint_after_load": fp, "footprint": fp,
            "weight_bytes_per_token": MEMORY[arm], "weight_bytes_excluded": {},
            "layers_after_load": {}, "layers": {}, "removed_wrappers": {},
            "cuda_allocated_after_load_bytes": None, "cuda_allocated_after_warmup_bytes": None,
            "bnb_cpu_path": None}  # fmt: skip


def bench_record(
    arm: str, baseline: str, arm_ms: float, base_ms: float, static: bool = True
) -> dict:
    """A bench/{arm}.json that matches the schema: decode, prefill and throughput in eager (and
    static) mode, with made-up timings."""

    def mode(supported: bool) -> dict:
        if not supported:
            return {"supported": False, "reason": "not on this device"}
        return {
            "supported": True, "reason": None, "compiled": False, "compile_mode": None,
            "prefill_compiled": False, "description": "synthetic", "baseline_supported": True,
            "baseline_reason": None,
            "decode": {
                "batch_size": 1, "prompt_length": 8, "new_tokens": 4, "order": "ABABAB",
                "arm": _result(ms_per_token=_stat(arm_ms), roofline_ms=1.0,
                               roofline_fraction=1.0 / arm_ms),
                "baseline": _result(ms_per_token=_stat(base_ms)),
                "time_ratio": arm_ms / base_ms, "paired_time_ratio": None,
            },
            "prefill": [
                {"batch_size": 1, "prompt_length": p, "order": "ABABAB",
                 "arm": _result(ms=_stat(p * arm_ms / 10)),
                 "baseline": _result(ms=_stat(p * base_ms / 10)), "time_ratio": arm_ms / base_ms,
                 "paired_time_ratio": None}
                for p in (8, 16)
            ],
            "throughput": [
                {"batch_size": b, "prompt_length": 8, "new_tokens": 4, "order": "ABABAB",
                 "arm": _result(tokens_per_s=_stat(1000 * b / arm_ms)),
                 "baseline": _result(tokens_per_s=_stat(1000 * b / base_ms)),
                 "throughput_ratio": base_ms / arm_ms, "paired_throughput_ratio": None}
                for b in (1, 2)
            ],
        }  # fmt: skip

    device = {"device_kind": "cpu", "name": "test cpu", "total_memory_bytes": None,
              "driver": None, "cuda": None, "torch": "2.13.0", "transformers": None,
              "bitsandbytes": None, "compressed_tensors": None, "cpu_model": "test cpu",
              "cpu_capability": "DEFAULT", "bnb_avx512bf16": False, "clocks": None}  # fmt: skip
    return {
        "schema": SCHEMA_ID,
        "arm": arm,
        "baseline": baseline,
        "is_baseline": arm == baseline,
        "device_kind": "cpu",
        "device": device,
        "settings": {},
        "interleaving": {
            "strategy": "single" if arm == baseline else "interleaved",
            "reason": None,
            "letters": {"A": "arm", "B": "baseline"},
        },  # fmt: skip
        "bandwidth": {
            "method": "synthetic",
            "buffer_bytes": 1,
            "bytes_moved_per_copy": 2,
            "gb_per_s": None,
        },  # fmt: skip
        "models": {"arm": _model(arm), "baseline": None if arm == baseline else _model(baseline)},
        "modes": {"eager": mode(True), "static": mode(static)},
        "largest_batch": {},
        "wall_s": 1.0,
        "code_version": CODE_VERSION,
    }


BENCH_MS = {"fp32": 10.0, "same": 8.0, "bad": 5.0, "small": 20.0}


def make_study(root: Path) -> dict[str, list[Path]]:
    """A study's job outputs on disk (arm `gone` has none): samples, evals, models, bench."""
    files: dict[str, list[Path]] = {"samples": [], "evals": [], "models": [], "bench": []}
    for (arm, task), metrics in outcomes().items():
        d = root / "eval" / arm
        d.mkdir(parents=True, exist_ok=True)
        samples = d / f"{task}.samples.jsonl"
        with open(samples, "w") as f:
            for i in range(N):
                rec = {"task": task, "doc_id": i, "doc_hash": f"h{task}{i}",
                       "metrics": {m: float(v[i]) for m, v in metrics.items()}}  # fmt: skip
                f.write(json.dumps(rec) + "\n")
        hib = {task: {m: True for m in metrics}}
        (d / f"{task}.json").write_text(
            json.dumps({"arm": arm, "task": task, "higher_is_better": hib,
                        "code_version": CODE_VERSION})
        )  # fmt: skip
        files["samples"].append(samples)
        files["evals"].append(d / f"{task}.json")
    for arm, mem in MEMORY.items():
        d = root / "models" / arm
        d.mkdir(parents=True)
        params = {k: v for k, v in ARMS[arm].items()}
        rec = {"arm": arm, "method": ARMS[arm]["method"], "bits": 4, "parameters": params,
               "memory_bytes": {"total": mem}, "disk_bytes": mem + 10, "seconds": 1.5,
               "sha256": {"model.safetensors": f"sha-{arm}"}, "device": {"device_kind": "cpu"},
               "versions": {"torch": "2.13.0"}, "code_version": CODE_VERSION}  # fmt: skip
        (d / "quantize.json").write_text(json.dumps(rec))
        files["models"].append(d)
        b = root / "bench" / f"{arm}.json"
        b.parent.mkdir(exist_ok=True)
        b.write_text(json.dumps(bench_record(arm, "fp32", BENCH_MS[arm], BENCH_MS["fp32"])))
        files["bench"].append(b)
    gone = root / "models" / "gone" / "quantize.json"  # a failure record, as a failed job leaves
    gone.parent.mkdir(parents=True)
    gone.write_text(json.dumps({"status": "failed", "stage": "quantize", "arm": "gone",
                                "task": None, "reason": "quantize failed (log: x)"}))  # fmt: skip
    files["models"].append(gone.parent)
    return files


ANALYSIS = Analysis(margin=0.05, alpha=0.05, n_boot=500, seed=0, recommend="smallest-equivalent")


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> tuple[Path, dict[str, list[Path]], dict[str, Path]]:
    """A synthetic study run through compare.run."""
    root = tmp_path_factory.mktemp("study")
    files = make_study(root)
    out = {k: root / f"{k}.out" for k in
           ("scores", "comparisons", "decision", "decision_html", "summary", "summary_md")}  # fmt: skip
    rec = compare.run(files["samples"], files["evals"], files["models"], files["bench"], ARMS,
                      TASKS, "fp32", ANALYSIS, "synthetic", out)  # fmt: skip
    return root, files, out | {"recommendation": rec}


# --------------------------------------------------------------------------- loading


def test_sample_rows_take_subjects_and_skip_non_numbers():
    records = [
        {
            "task": "mmlu_law",
            "doc_id": 3,
            "doc_hash": "a",
            "metrics": {"acc": 1.0, "ppl": [-2.5, 4]},
        },
        {"task": "mmlu", "doc_id": 4, "doc_hash": "b", "metrics": {"acc": True}},
    ]
    rows = compare.sample_rows(records, "int8", "mmlu")
    assert rows == [
        {"task": "mmlu", "doc_id": 3, "doc_hash": "a", "arm": "int8", "metric": "acc", "value": 1.0,
         "subject": "mmlu_law"},
        {"task": "mmlu", "doc_id": 4, "doc_hash": "b", "arm": "int8", "metric": "acc", "value": 1.0,
         "subject": None},
    ]  # fmt: skip


def test_arm_and_task_come_from_the_path():
    assert compare.arm_task_of("results/s/eval/nf4_dq/gsm8k.samples.jsonl") == ("nf4_dq", "gsm8k")
    with pytest.raises(ValueError):
        compare.arm_task_of("results/s/eval/nf4_dq/gsm8k.json")


def test_load_samples_reads_every_file(study):
    _, files, _ = study
    df = compare.load_samples(files["samples"])
    # qa: em and f1; mc: acc; four arms with outputs
    assert len(df) == 4 * N * 3
    assert set(df["arm"]) == {"fp32", "same", "bad", "small"}
    assert df["subject"].isna().all()


def write_samples(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.mark.parametrize(
    "bad,what", [(math.nan, "is nan"), (None, "is None, not a number"), ("absent", "is missing")]
)
def test_an_unscorable_metric_value_names_the_file_arm_and_doc(tmp_path, bad, what):
    records = [
        {"task": "mc", "doc_id": i, "doc_hash": f"h{i}", "metrics": {"acc": 1.0, "ppl": [-2.0, 3]}}
        for i in range(5)
    ]
    if bad == "absent":
        del records[3]["metrics"]["acc"]
    else:
        records[3]["metrics"]["acc"] = bad
    path = write_samples(tmp_path / "eval" / "nf4" / "mc.samples.jsonl", records)
    good = write_samples(tmp_path / "eval" / "fp32" / "mc.samples.jsonl", records[:3])
    with pytest.raises(ValueError) as err:
        compare.load_samples([good, path])
    message = str(err.value)
    assert str(path) in message and what in message
    assert "arm 'nf4'" in message and "doc_id 3" in message and "metric 'acc'" in message


def test_metrics_are_expected_per_subtask_and_non_numbers_still_skipped():
    # a group whose subtasks score different metrics: each subtask is judged on its own
    records = [
        {"task": "grp_a", "doc_id": 0, "doc_hash": "a", "metrics": {"acc": 1.0, "f1": 0.5}},
        {"task": "grp_a", "doc_id": 1, "doc_hash": "b", "metrics": {"acc": 0.0, "f1": 0.2}},
        {"task": "grp_b", "doc_id": 0, "doc_hash": "c", "metrics": {"acc": 1.0, "ppl": [-1, 2]}},
    ]
    rows = compare.sample_rows(records, "int8", "grp")
    assert [(r["subject"], r["metric"]) for r in rows] == [
        ("grp_a", "acc"), ("grp_a", "f1"), ("grp_a", "acc"), ("grp_a", "f1"), ("grp_b", "acc"),
    ]  # fmt: skip
    # NaN is never a score, even where no other record has the metric
    records[2]["metrics"]["ppl"] = math.nan
    with pytest.raises(ValueError, match="doc_id 0 \\(subtask 'grp_b'\\): metric 'ppl' is nan"):
        compare.sample_rows(records, "int8", "grp", "x.samples.jsonl")


def test_oriented_comparisons_keep_their_numbers_and_pass_the_check():
    rng = np.random.default_rng(3)
    base = rng.uniform(10, 30, 300)
    samples = pd.concat(
        [
            pd.DataFrame({"task": "wiki", "doc_id": np.arange(300), "doc_hash": None, "arm": arm,
                          "metric": "word_perplexity", "value": v, "subject": None})
            for arm, v in (("fp32", base), ("q", base + rng.normal(2.0, 1.0, 300)))
        ],
        ignore_index=True,
    )  # fmt: skip
    evals = [{"task": "wiki", "higher_is_better": {"wiki": {"word_perplexity": False}}}]
    raw = stats.compare(samples, "fp32", margin=0.5, n_boot=300)[1]  # as if higher were better
    _, oriented = compare.analyse(
        samples, evals, "fp32", ["fp32", "q"], ["wiki"], Analysis(margin=0.5, n_boot=300)
    )
    assert raw["verdict"].tolist() == ["better"] and oriented["verdict"].tolist() == ["worse"]
    assert oriented["higher_is_better"].tolist() == [False]
    numbers = ["diff", "diff_ci_low", "diff_ci_high", "eq_low", "eq_high", "tost_p"]
    pd.testing.assert_frame_equal(raw[numbers], oriented[numbers])
    assert oriented["diff_ci_low"].iloc[0] > 0  # a loss: perplexity went up
    stats.check_verdicts(oriented, 0.5, 0.05)
    with pytest.raises(ValueError, match="other side of 0"):
        stats.check_verdicts(oriented.assign(verdict="better"), 0.5)


def test_a_lower_is_better_metric_reads_a_rise_as_a_loss():
    """verdict(): the same significant rise is "better" for accuracy, "worse" for perplexity."""
    args = dict(diff=0.3, ci=(0.1, 0.5), p=0.001, p_holm=0.002, eq=(0.05, 0.55), margin=0.01)
    assert stats.verdict(**args).verdict == "better"
    assert stats.verdict(**args, higher_is_better=False).verdict == "worse"
    fall = dict(args, diff=-0.3, ci=(-0.5, -0.1), eq=(-0.55, -0.05))
    assert stats.verdict(**fall, higher_is_better=False).verdict == "better"


# --------------------------------------------------------------------------- speed


def test_decode_speed_prefers_static_and_reads_faster_as_above_one():
    fast = policy.decode_speed(bench_record("same", "fp32", 8.0, 10.0))
    assert fast.ratio == pytest.approx(10.0 / 8.0)
    assert fast.measure.startswith("static mode, decode ms/token at batch 1")
    eager_only = policy.decode_speed(bench_record("same", "fp32", 20.0, 10.0, static=False))
    assert eager_only.ratio == pytest.approx(0.5)
    assert eager_only.measure.startswith("eager mode")
    assert policy.decode_speed(bench_record("fp32", "fp32", 10.0, 10.0)).ratio == 1.0
    assert math.isnan(policy.decode_speed({"modes": {}}).ratio)
    built = bench_record("same", "fp32", 8.0, 10.0)
    built["modes"]["static"]["builds"] = {"arm": {"compile_mode": "max-autotune"}}
    assert policy.decode_speed(built).measure.endswith(
        "; each model's step built its fastest way (step_build, benchmark table)"
    )
    assert "built" not in fast.measure


# --------------------------------------------------------------------------- the decision


def test_tables_equal_stats_compare_on_the_same_samples(study):
    _, files, out = study
    samples = compare.load_samples(files["samples"])
    scores, comparisons = stats.compare(samples, "fp32", 0.05, 0.05, 500, 0,
                                        arms=list(ARMS), tasks=TASKS)  # fmt: skip
    written = pd.read_csv(out["comparisons"])
    pd.testing.assert_frame_equal(
        written[list(stats.COMPARISON_COLUMNS)].drop(columns=["equivalent"]),
        comparisons.drop(columns=["equivalent"]).astype({"metric": object}),
        check_dtype=False,
    )
    pd.testing.assert_frame_equal(pd.read_csv(out["scores"]), scores, check_dtype=False)
    decision = pd.read_csv(out["decision"]).set_index("arm")
    expected = policy.task_verdicts(comparisons)
    for arm in ("same", "bad", "small", "gone"):
        for task in TASKS:
            assert decision.loc[arm, f"verdict:{task}"] == expected[arm][task]


def test_decision_lists_every_arm_and_recommends_by_the_rule(study):
    _, _, out = study
    decision = pd.read_csv(out["decision"]).set_index("arm")
    assert list(decision.index) == list(ARMS)
    # identical answers: equivalent within +-0.05 with 400 items; 40% flipped to wrong: worse
    assert decision.loc["same", "verdict:mc"] == "equivalent"
    assert decision.loc["bad", "verdict:mc"] == "worse"
    assert decision.loc["bad", "worst_loss_diff"] < -0.2
    assert decision.loc["same", "worst_loss"] == "none"
    assert decision.loc["gone", "status"] == "missing: quantize failed (log: x)"
    assert set(decision.loc["gone", ["verdict:qa", "verdict:mc"]]) == {"missing"}
    assert math.isnan(decision.loc["gone", "memory_bytes"])
    assert (decision.loc["fp32", ["verdict:qa", "verdict:mc"]] == "baseline").all()
    # smallest equivalent: "small" (1000 bytes) beats "same" (2000); "bad" is smaller but worse
    assert out["recommendation"].arm == "small"
    assert decision["recommended"].tolist() == [a == "small" for a in ARMS]
    assert decision.loc["small", "memory_vs_baseline"] == pytest.approx(1000 / 4000)
    assert decision.loc["small", "speed_vs_baseline"] == pytest.approx(10.0 / 20.0)
    assert decision.loc["fp32", "speed_vs_baseline"] == 1.0


def test_fastest_rule_and_primary_metric(study):
    root, files, _ = study
    samples = compare.load_samples(files["samples"])
    evals = [json.loads(p.read_text()) for p in files["evals"]]
    _, comparisons = compare.analyse(samples, evals, "fp32", list(ARMS), TASKS, ANALYSIS)
    quant = aggregate.load_quantize_records(files["models"])
    speeds = {a: policy.Speed(BENCH_MS["fp32"] / ms, "x") for a, ms in BENCH_MS.items()}
    decision, rec = policy.decision_table(comparisons, ARMS, "fp32", TASKS, quant, speeds,
                                           {}, "fastest-equivalent")  # fmt: skip
    assert rec.arm == "same"  # 1.25x; "bad" is faster but worse
    assert decision.set_index("arm").loc["gone", "status"] == "missing: not built"


def test_missing_evaluation_marks_the_arm_incomplete(study):
    _, files, _ = study
    kept = [
        p for p in files["samples"] if not (p.parent.name == "same" and p.name.startswith("qa"))
    ]
    samples = compare.load_samples(kept)
    _, comparisons = compare.analyse(samples, [], "fp32", list(ARMS), TASKS, ANALYSIS)
    quant = aggregate.load_quantize_records(files["models"])
    reasons = {("same", "qa"): "evaluation failed (log: y)"}
    decision, _ = policy.decision_table(comparisons, ARMS, "fp32", TASKS, quant, {}, reasons,
                                         "smallest-equivalent")  # fmt: skip
    row = decision.set_index("arm").loc["same"]
    assert row["verdict:qa"] == "missing" and row["verdict:mc"] == "equivalent"
    assert row["status"] == "incomplete: qa evaluation failed (log: y)"


def test_an_arm_run_at_another_batch_size_gets_a_caveat(study):
    _, files, _ = study
    run = lambda arm, task, used, k=0: {"arm": arm, "task": task, "batch_size_used": used,  # noqa: E731
                                        "batch_halvings": k}  # fmt: skip
    evals = [run("fp32", "qa", 8), run("same", "qa", 8), run("bad", "qa", 4, 1),
             run("fp32", "mc", 16, 1), run("same", "mc", 32), run("small", "mc", 16)]  # fmt: skip
    caveats = policy.batch_caveats(evals, "fp32")
    assert caveats == {
        "bad": "qa ran at batch 4 (halved 1× after an out-of-memory), the baseline at 8",
        "same": "mc ran at batch 32, the baseline at 16 (halved 1× after an out-of-memory)",
    }
    samples = compare.load_samples(files["samples"])
    _, comparisons = compare.analyse(samples, [], "fp32", list(ARMS), TASKS, ANALYSIS)
    quant = aggregate.load_quantize_records(files["models"])
    decision, _ = policy.decision_table(comparisons, ARMS, "fp32", TASKS, quant, {}, {},
                                         "smallest-equivalent", caveats=caveats)  # fmt: skip
    decision = decision.set_index("arm")
    assert decision.loc["bad", "caveat"] == caveats["bad"]
    assert decision.loc["small", "caveat"] == "" and decision.loc["small", "status"] == "ok"
    shown = report.decision_display(decision.reset_index()).set_index("arm")
    assert caveats["same"] in shown.loc["same", "note"]


def test_power_states_the_detectable_difference(study):
    _, _, out = study
    comparisons = pd.read_csv(out["comparisons"])
    power = policy.power_by_task(comparisons).set_index(["task", "metric"])
    mc = comparisons[(comparisons.task == "mc") & (comparisons.verdict != "missing")]
    assert power.loc[("mc", "acc"), "mdd_max"] == pytest.approx(mc["mdd"].max())
    assert power.loc[("mc", "acc"), "n"] == N


# --------------------------------------------------------------------------- failed jobs


def fail(record: Path, stage: str, arm: str, task: str | None = None, **kw) -> None:
    """Run a job body that raises inside recording_failure, on its last attempt."""
    record.parent.mkdir(parents=True, exist_ok=True)
    log = record.parent.parent / f"{arm}-{stage}.log"
    with records.recording_failure(stage, record, arm=arm, task=task, log=log, **kw):
        raise RuntimeError(f"{arm} broke")


def test_a_failure_on_the_last_attempt_is_recorded_and_the_job_ends(tmp_path, monkeypatch):
    monkeypatch.setenv(records.ATTEMPTS_ENV, "2")
    model = tmp_path / "results/s/models/b"
    model.mkdir(parents=True)
    (model / "model.safetensors").write_text("half-written")
    with pytest.raises(RuntimeError, match="b broke"):  # attempt 1 of 2: Snakemake retries
        fail(records.quantize_record_path(model), "quantize", "b", attempt=1, clear=model)
    assert (model / "model.safetensors").exists() and not (model / "quantize.json").exists()
    fail(records.quantize_record_path(model), "quantize", "b", attempt=2, clear=model)
    assert sorted(p.name for p in model.iterdir()) == ["quantize.json"]  # the job's own leftovers
    rec = records.read(model / "quantize.json")
    assert rec["status"] == "failed" and rec["stage"] == "quantize" and not rec["upstream"]
    assert rec["reason"].startswith("quantize failed: RuntimeError: b broke (log: ")
    assert "Traceback" in rec["error"]
    assert "recorded the failure" in (model.parent / "b-quantize.log").read_text()


def test_a_failed_input_is_recorded_at_once_with_empty_outputs(tmp_path, monkeypatch):
    monkeypatch.setenv(records.ATTEMPTS_ENV, "3")
    model = tmp_path / "models/b"
    fail(records.quantize_record_path(model), "quantize", "b", attempt=3)
    out = tmp_path / "eval/b/t.json"
    samples = tmp_path / "eval/b/t.samples.jsonl"
    out.parent.mkdir(parents=True)
    with records.recording_failure(
        "evaluate", out, arm="b", task="t", log=tmp_path / "e.log", attempt=1, empty=[samples]
    ):
        records.check_inputs(**{"quantize job": records.quantize_record_path(model)})
    rec = records.read(out)
    assert rec["upstream"] and rec["reason"].startswith("not run: its quantize job failed: ")
    assert samples.read_text() == ""


def test_failed_jobs_are_read_from_the_records(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    arms, tasks = ["base", "a", "b"], ["t1", "t2"]
    models = [f"results/s/models/{a}" for a in arms]
    evals = [f"results/s/eval/{a}/{t}.json" for a in arms for t in tasks]
    benches = [f"results/s/bench/{a}.json" for a in arms]
    for path in [records.quantize_record_path(m) for m in models] + evals + benches:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps({"arm": str(path)}))
    fail(Path("results/s/models/b/quantize.json"), "quantize", "b")
    fail(Path("results/s/eval/a/t2.json"), "evaluate", "a", "t2")
    fail(Path("results/s/bench/a.json"), "benchmark", "a")
    failed = compare.failed_jobs(models, evals, benches)
    assert [(f["stage"], f["arm"], f["task"]) for f in failed] == [
        ("quantize", "b", None), ("evaluate", "a", "t2"), ("benchmark", "a", None),
    ]  # fmt: skip
    reasons = policy.missing_reasons(failed)
    assert reasons["b"].startswith("quantize failed: RuntimeError: b broke")
    assert ("a", "t2") in reasons and ("benchmark", "a") in reasons
    assert len(records.successes([f"results/s/eval/{a}/t2.json" for a in arms])) == 2


def test_a_failure_changes_the_retry_param_until_a_retry_succeeds(tmp_path):
    """The `retry` param Snakemake compares between runs: NO_RETRY (left out of its params
    trigger) until a job fails, then the failure's id, kept by the retry that succeeds."""
    out = tmp_path / "eval" / "a" / "t.json"
    assert records.retry_token(out) is records.NO_RETRY  # nothing there yet
    out.parent.mkdir(parents=True)
    out.write_text(json.dumps({"arm": "a"}))
    assert records.retry_token(out) is records.NO_RETRY  # never failed: nothing changes
    fail(out, "evaluate", "a", "t")
    token = records.retry_token(out)
    assert isinstance(token, str) and records.read(out)["failure_id"] in token
    with records.recording_failure(
        "evaluate", out, arm="a", task="t", log=tmp_path / "t.log", retry=token
    ):
        out.write_text(json.dumps({"arm": "a", "n_samples": 3}))  # the retry succeeds
    assert records.retry_token(out) == token  # the next run sees the param the retry ran with
    assert records.read(out)["n_samples"] == 3
    fail(out, "evaluate", "a", "t")  # it fails again: a new id, so a new retry
    assert records.retry_token(out) not in (token, records.NO_RETRY)
