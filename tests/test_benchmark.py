"""quantstudy.benchmark on the CPU: a tiny random Llama as baseline (fp32), as a bitsandbytes NF4
arm and as a compressed-tensors W4A16 arm. No test asserts a wall time: timings are checked for
structure (interleaving, ratios computed from the same job's samples), or come from a fake clock."""

from __future__ import annotations

import itertools
import json
import statistics

import jsonschema
import pytest
import torch

from quantstudy import benchmark as bm
from quantstudy.benchmark.isolation import largest_batch_isolated
from quantstudy.benchmark.search import next_probe
from quantstudy.provenance import dir_weight_files, sha256_files

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = bm.SMALL_SETTINGS
# Only the cheapest scenario, for the tests that look at one mechanism.
PREFILL_ONLY = {
    "warmup": 1,
    "repeats": 3,
    "prefill": {"prompt_lengths": [8]},
    "decode": {"modes": []},
    "throughput": {"modes": []},
    "largest_batch": {"modes": []},
    "bandwidth": {"bytes": 1 << 20, "warmup": 1, "repeats": 2},
}


def _with(base: dict, **sections) -> dict:
    out = json.loads(json.dumps(base))
    for key, value in sections.items():
        if isinstance(value, dict):
            out.setdefault(key, {}).update(value)
        else:
            out[key] = value
    return out


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """Saved model directories: baseline (fp32), nf4 (bitsandbytes 4-bit), w4a16 (compressed-tensors)."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("bench")
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=512,
        max_position_embeddings=256,
    )
    torch.manual_seed(0)
    out = {name: root / name for name in ("baseline", "nf4", "w4a16")}
    LlamaForCausalLM(config).save_pretrained(out["baseline"])
    nf4 = AutoModelForCausalLM.from_pretrained(
        out["baseline"], quantization_config=BitsAndBytesConfig(load_in_4bit=True), device_map="cpu"
    )
    nf4.save_pretrained(out["nf4"])
    _save_w4a16(out["baseline"], out["w4a16"])
    methods = {"baseline": "baseline", "nf4": "bnb-4bit", "w4a16": "gptq"}
    for name, path in out.items():
        sha256 = sha256_files(dir_weight_files(path), path)  # every load checks them
        record = {"arm": name, "method": methods[name], "sha256": sha256}
        (path / "quantize.json").write_text(json.dumps(record))
    return out


def _save_w4a16(source, target) -> None:
    """Round-to-nearest int4 weights, group 32, saved as compressed-tensors (like GPTQ/AWQ arms)."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.bfloat16)
    weights = QuantizationArgs(
        num_bits=4, type="int", symmetric=True, strategy="group", group_size=32
    )
    scheme = QuantizationScheme(targets=["Linear"], weights=weights)
    oneshot(
        model=model, recipe=QuantizationModifier(config_groups={"g": scheme}, ignore=["lm_head"])
    )
    model.save_pretrained(target, save_compressed=True)


@pytest.fixture(scope="module")
def nf4_result(dirs):
    """One full job on the CPU (both modes, every scenario, SMALL_SETTINGS) with the real timer."""
    return bm.run_benchmark(dirs["nf4"], dirs["baseline"], SMALL, device="cpu")


def _validate(result: dict) -> None:
    jsonschema.validate(result, bm.BENCH_SCHEMA)
    json.dumps(result, allow_nan=False)  # strict JSON: no NaN or infinity anywhere


def _scenarios(mode: dict) -> list[dict]:
    return mode["prefill"] + ([mode["decode"]] if mode["decode"] else []) + mode["throughput"]


# --- pure functions ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cap", "start", "limit", "expected"),
    [
        (37, 1, 4096, 37),
        (1, 1, 4096, 1),
        (0, 1, 4096, 0),
        (10_000, 1, 100, 100),  # the cap lies above the search limit
        (64, 1, 64, 64),  # exactly the limit
        (5, 8, 4096, 5),  # start above the cap: bisect below it
        (1000, 3, 1000, 1000),
        (999, 3, 1000, 999),
    ],
)
def test_largest_batch_finds_the_fake_cap(cap, start, limit, expected):
    tried: list[int] = []

    def fits(batch: int) -> bool:
        tried.append(batch)
        return batch <= cap

    assert bm.largest_batch(fits, start=start, limit=limit) == expected
    assert max(tried) <= limit
    assert len(tried) == len(set(tried))  # no size tried twice
    assert len(tried) <= 2 * (limit.bit_length() + 1)  # doubling then bisection, not a scan


def test_largest_batch_doubles_then_bisects():
    tried: list[int] = []
    bm.largest_batch(lambda b: tried.append(b) or b <= 37, start=1, limit=4096)
    assert tried == [1, 2, 4, 8, 16, 32, 64, 48, 40, 36, 38, 37]


def test_interleave_alternates_calls():
    calls: list[str] = []
    counter = itertools.count()

    def fn(name):
        return lambda: calls.append(name) or next(counter)

    out = bm.interleave({"arm": fn("A"), "baseline": fn("B")}, repeats=3)
    assert calls == ["A", "B", "A", "B", "A", "B"]
    assert out == {"arm": [0, 2, 4], "baseline": [1, 3, 5]}


def test_ratio_to_baseline():
    assert bm.ratio_to_baseline([2.0, 4.0, 6.0], [1.0, 2.0, 3.0]) == 2.0
    assert bm.ratio_to_baseline([1.0, 10.0], [4.0]) == 5.5 / 4.0
    assert bm.ratio_to_baseline([], [1.0]) is None
    assert bm.ratio_to_baseline([1.0], [0.0]) is None
    assert bm.paired_ratios([2.0, 9.0], [1.0, 3.0])["samples"] == [2.0, 3.0]


def test_settings_reject_unknown_keys_and_keep_defaults():
    with pytest.raises(ValueError, match=r"settings\.decode\.new_tokenz"):
        bm.resolve_settings({"decode": {"new_tokenz": 4}})
    with pytest.raises(ValueError, match="modes"):
        bm.resolve_settings({"prefill": {"modes": ["turbo"]}})
    resolved = bm.resolve_settings({"decode": {"new_tokens": 8}})
    assert resolved["decode"] == bm.DEFAULT_SETTINGS["decode"] | {"new_tokens": 8}
    assert resolved["throughput"]["batch_sizes"] == [1, 4, 8, 16, 32, 64]


def test_prompts_are_fixed_and_shared():
    a = bm.prompt_ids(512, 4, 16, seed=0)
    assert torch.equal(a, bm.prompt_ids(512, 4, 16, seed=0))
    assert torch.equal(a[:1], bm.prompt_ids(512, 1, 16, seed=0))
    assert not torch.equal(a, bm.prompt_ids(512, 4, 16, seed=1))
    # token ids an embedding takes, shaped (batch, length); their range is randint's to keep
    assert a.shape == (4, 16) and a.dtype == torch.long


# --- models -----------------------------------------------------------------------------------


def test_weight_bytes_counts_packed_weights_and_absmax(dirs):
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(dirs["baseline"], device_map="cpu")
    nf4 = AutoModelForCausalLM.from_pretrained(dirs["nf4"], device_map="cpu")
    params = sum(p.numel() * p.element_size() for p in base.parameters())
    buffers = sum(b.numel() * b.element_size() for b in base.buffers())
    embedding = base.get_input_embeddings().weight
    # untied embeddings: a decode step reads one row of the input table, all of the output head
    assert bm.weight_bytes(base) == params + buffers - embedding.numel() * embedding.element_size()
    absmax = sum(
        m.weight.quant_state.absmax.numel() * m.weight.quant_state.absmax.element_size()
        for m in nf4.modules()
        if hasattr(getattr(m, "weight", None), "quant_state")
    )
    fp = bm.footprint(nf4)
    assert fp["quant_state_bytes"] >= absmax > 0
    assert bm.weight_bytes(nf4) < bm.weight_bytes(base)
    assert bm.linear_layers(nf4) == {"Linear4bit:weight:uint8": 14, "Linear:weight:float32": 1}


def test_static_loop_matches_generate(dirs):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(dirs["baseline"], device_map="cpu")
    ids = bm.prompt_ids(512, 2, 8, seed=0)
    with torch.inference_mode():
        reference = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=6,
            min_new_tokens=6,
            do_sample=False,
            pad_token_id=0,
        )[:, 8:]
        runner = bm.StaticRunner(model, bm.ModeSpec("static"))
        first = runner.tokens(ids, 6)
        again = runner.tokens(ids, 6)  # the same cache, reset in between
    assert torch.equal(first, reference)
    assert torch.equal(again, reference)


# --- whole jobs -------------------------------------------------------------------------------


def test_full_job_matches_schema(nf4_result, dirs):
    r = nf4_result
    _validate(r)
    assert (r["arm"], r["baseline"], r["is_baseline"]) == ("nf4", "baseline", False)
    assert r["device_kind"] == "cpu" and r["device"]["torch"] == torch.__version__
    assert r["interleaving"]["strategy"] == "interleaved"
    assert r["bandwidth"]["gb_per_s"]["median"] > 0
    arm, base = r["models"]["arm"], r["models"]["baseline"]
    assert arm["method"] == "bnb-4bit" and base["method"] == "baseline"
    assert arm["footprint"]["quant_state_bytes"] > 0 and base["footprint"]["quant_state_bytes"] == 0
    assert arm["weight_bytes_per_token"] < base["weight_bytes_per_token"]
    assert arm["disk_bytes"] >= arm["weights_disk_bytes"] > 0
    # the reference CPU path ran on any CPU (see quantstudy.loading); the baseline has no 4-bit
    assert (arm["bnb_cpu_path"], base["bnb_cpu_path"]) == ("reference", None)
    assert r["device"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert set(r["modes"]) == {"eager", "static"}
    static = r["modes"]["static"]
    assert static["compiled"] is False and static["prefill_compiled"] is False  # CPU: no compile
    assert "not compiled" in static["description"]
    for mode in r["modes"].values():
        assert mode["supported"] is True
        assert [e["prompt_length"] for e in mode["prefill"]] == [8, 16]
        assert [e["batch_size"] for e in mode["throughput"]] == [1, 2]
        decode = mode["decode"]
        for who in ("arm", "baseline"):
            model = r["models"][who]
            expected = (
                model["weight_bytes_per_token"] / (r["bandwidth"]["gb_per_s"]["median"] * 1e9) * 1e3
            )
            assert decode[who]["roofline_ms"] == pytest.approx(expected)
    lb = r["largest_batch"]["eager"]
    assert lb["batch_size"] == 4 and lb["hit_limit"] is True  # nothing runs out of memory here
    assert [p["batch_size"] for p in lb["probes"]] == [1, 2, 4]
    assert lb["throughput"]["tokens_per_s"]["n"] == 2
    # the baseline, measured in the same job at the arm's largest batch, gives the ratio
    base = lb["baseline"]
    assert base["batch_size"] == 4 and base["fits"] is True and base["reason"] is None
    assert base["throughput"]["tokens_per_s"]["n"] == 2
    assert lb["throughput_ratio"] == pytest.approx(
        lb["throughput"]["tokens_per_s"]["median"] / base["throughput"]["tokens_per_s"]["median"]
    )


def test_full_job_ratios_come_from_the_interleaved_baseline(nf4_result):
    for mode in nf4_result["modes"].values():
        for entry in _scenarios(mode):
            repeats = entry["arm"]["repeats"]
            assert entry["order"] == "AB" * repeats
            if "throughput_ratio" in entry:
                metric, ratio = "tokens_per_s", "throughput_ratio"
            else:
                metric, ratio = ("ms_per_token" if "new_tokens" in entry else "ms"), "time_ratio"
            arm, base = entry["arm"][metric], entry["baseline"][metric]
            assert arm["n"] == base["n"] == repeats
            assert entry[ratio] == pytest.approx(arm["median"] / base["median"])
            paired = [a / b for a, b in zip(arm["samples"], base["samples"], strict=True)]
            assert entry["paired_" + ratio]["samples"] == pytest.approx(paired)


def test_benchmark_table_reads_the_largest_batch_ratio(nf4_result):
    from quantstudy.aggregate import bench_rows

    lb = nf4_result["largest_batch"]["eager"]
    (row,) = [r for r in bench_rows(nf4_result) if r["scenario"] == "largest_batch"]
    assert row["batch_size"] == lb["batch_size"]
    assert row["median"] == lb["throughput"]["tokens_per_s"]["median"]
    assert row["baseline_median"] == lb["baseline"]["throughput"]["tokens_per_s"]["median"]
    assert row["ratio_to_baseline"] == pytest.approx(row["median"] / row["baseline_median"])
    assert row["ratio_kind"] == "throughput_ratio"


def test_fake_clock_shows_alternation(dirs):
    """A clock that only counts calls: interleaving means arm[i] < baseline[i] < arm[i+1]."""
    counter = itertools.count(1)

    def clock(run, setup=None):
        if setup is not None:
            setup()
        run()
        return float(next(counter)), None

    settings = _with(
        PREFILL_ONLY,
        prefill={"modes": ["eager"]},
        throughput={"modes": ["static"], "batch_sizes": [2], "prompt_length": 8, "new_tokens": 3},
    )
    r = bm.run_benchmark(dirs["nf4"], dirs["baseline"], settings, device="cpu", timer=clock)
    _validate(r)
    assert set(r["modes"]) == {"eager", "static"}
    entries = r["modes"]["eager"]["prefill"] + r["modes"]["static"]["throughput"]
    assert len(entries) == 2
    for entry in entries:
        metric = "ms" if "time_ratio" in entry else "tokens_per_s"
        a, b = entry["arm"]["ms"]["samples"], entry["baseline"]["ms"]["samples"]
        merged = [x for pair in zip(a, b, strict=True) for x in pair]
        assert merged == sorted(merged) and len(set(merged)) == len(merged)
        assert merged[1:] == [x + 1 for x in merged[:-1]]  # consecutive: nothing else timed between
        ratio = "time_ratio" if metric == "ms" else "throughput_ratio"
        expected = statistics.median(entry["arm"][metric]["samples"]) / statistics.median(
            entry["baseline"][metric]["samples"]
        )
        assert entry[ratio] == expected


def test_mode_the_arm_cannot_run_is_recorded(dirs, monkeypatch):
    real = bm.StaticRunner.prefill

    def prefill(self, ids):
        if "nf4" in str(self.model.name_or_path):
            raise RuntimeError("static is broken for this arm")
        return real(self, ids)

    monkeypatch.setattr(bm.StaticRunner, "prefill", prefill)
    settings = _with(
        PREFILL_ONLY,
        largest_batch={
            "modes": ["static"],
            "limit": 2,
            "prompt_length": 8,
            "new_tokens": 3,
            "repeats": 1,
        },
    )
    r = bm.run_benchmark(dirs["nf4"], dirs["baseline"], settings, device="cpu")
    _validate(r)
    assert r["modes"]["eager"]["supported"] is True
    static = r["modes"]["static"]
    assert static == {"supported": False, "reason": static["reason"]}
    assert "static is broken for this arm" in static["reason"] and "prefill/8" in static["reason"]
    assert (
        r["largest_batch"]["static"]["supported"] is True
    )  # the loop itself runs: only prefill broke


def test_mode_the_baseline_cannot_run_leaves_the_arm_measured(dirs, monkeypatch):
    real = bm.StaticRunner.prefill

    def prefill(self, ids):
        if "baseline" in str(self.model.name_or_path):
            raise RuntimeError("no static baseline")
        return real(self, ids)

    monkeypatch.setattr(bm.StaticRunner, "prefill", prefill)
    r = bm.run_benchmark(dirs["nf4"], dirs["baseline"], PREFILL_ONLY, device="cpu")
    _validate(r)
    static = r["modes"]["static"]
    assert static["supported"] is True and static["baseline_supported"] is False
    assert "no static baseline" in static["baseline_reason"]
    entry = static["prefill"][0]
    assert entry["baseline"] is None and entry["time_ratio"] is None
    assert entry["order"] == "A" * entry["arm"]["repeats"]


def test_out_of_memory_is_a_measurement(dirs, monkeypatch):
    """A fake memory cap: generating more than 3 rows raises torch.OutOfMemoryError."""
    real = bm.EagerRunner.generate

    def generate(self, ids, new_tokens):
        if ids.shape[0] > 3:
            raise torch.OutOfMemoryError("fake cap: 3 rows")
        return real(self, ids, new_tokens)

    monkeypatch.setattr(bm.EagerRunner, "generate", generate)
    settings = _with(
        PREFILL_ONLY,
        prefill={"modes": []},
        throughput={"modes": ["eager"], "batch_sizes": [2, 4], "prompt_length": 8, "new_tokens": 2},
        largest_batch={
            "modes": ["eager"],
            "limit": 64,
            "prompt_length": 8,
            "new_tokens": 2,
            "repeats": 1,
        },
    )
    r = bm.run_benchmark(dirs["nf4"], dirs["baseline"], settings, device="cpu")
    _validate(r)
    fits, oom = r["modes"]["eager"]["throughput"]
    assert not fits["arm"]["oom"] and fits["throughput_ratio"] is not None
    assert oom["arm"]["oom"] and oom["baseline"]["oom"]
    assert oom["arm"].get("tokens_per_s") is None and oom["throughput_ratio"] is None
    lb = r["largest_batch"]["eager"]
    assert lb["batch_size"] == 3 and lb["hit_limit"] is False
    assert {p["batch_size"]: p["fits"] for p in lb["probes"]} == {
        1: True,
        2: True,
        4: False,
        3: True,
    }
    # the baseline is measured at the arm's largest batch only, not searched again
    assert lb["baseline"]["batch_size"] == 3 and lb["baseline"]["fits"] is True
    assert lb["throughput_ratio"] == pytest.approx(
        lb["throughput"]["tokens_per_s"]["median"]
        / lb["baseline"]["throughput"]["tokens_per_s"]["median"]
    )


def test_arm_that_is_the_baseline_is_measured_once(dirs):
    r = bm.run_benchmark(dirs["baseline"], dirs["baseline"], PREFILL_ONLY, device="cpu")
    _validate(r)
    assert r["is_baseline"] and r["interleaving"]["strategy"] == "single"
    assert r["models"]["baseline"] is None
    for mode in r["modes"].values():
        entry = mode["prefill"][0]
        assert entry["baseline"] is None and entry["time_ratio"] == 1.0
        assert entry["order"] == "A" * entry["arm"]["repeats"]


def test_sequential_fallback_measures_one_after_the_other(dirs):
    settings = _with(PREFILL_ONLY, interleave=False, prefill={"modes": ["eager"]})
    r = bm.run_benchmark(dirs["nf4"], dirs["baseline"], settings, device="cpu")
    _validate(r)
    assert r["interleaving"]["strategy"] == "sequential"
    entry = r["modes"]["eager"]["prefill"][0]
    assert entry["order"] == "BBBAAA"
    assert entry["paired_time_ratio"] is None
    assert entry["time_ratio"] == pytest.approx(
        entry["arm"]["ms"]["median"] / entry["baseline"]["ms"]["median"]
    )


def test_compressed_tensors_arm_decompresses_and_compiles(dirs):
    """The W4A16 arm decompresses on the warm-up forward; its no-op wrappers go, so the decode
    step traces with fullgraph=True (backend "eager": dynamo's tracing without inductor's C++)."""
    settings = _with(
        PREFILL_ONLY,
        prefill={"modes": ["eager"]},
        decode={"modes": ["static"], "prompt_length": 8, "new_tokens": 3},
        static={"compile": True, "backend": "eager", "compile_prefill": False},
    )
    r = bm.run_benchmark(dirs["w4a16"], dirs["baseline"], settings, device="cpu")
    _validate(r)
    arm = r["models"]["arm"]
    assert arm["method"] == "gptq"
    assert any(":weight_packed:int32" in k for k in arm["layers_after_load"])
    assert not any("weight_packed" in k for k in arm["layers"])  # dense after the first forward
    assert arm["footprint"]["total_bytes"] > arm["footprint_after_load"]["total_bytes"]
    assert arm["removed_wrappers"]["quantized_forward"] == 14  # every quantized Linear
    assert arm["removed_wrappers"]["offload"] > 0
    # the dense weight is read, the scales kept beside it are not
    assert arm["weight_bytes_excluded"]["unused_linear_params"] > 0
    assert r["models"]["baseline"]["weight_bytes_excluded"]["unused_linear_params"] == 0
    static = r["modes"]["static"]
    assert static["supported"] is True, static.get("reason")
    assert static["compiled"] is True and static["prefill_compiled"] is False
    assert static["decode"]["arm"]["ms_per_token"]["n"] == static["decode"]["arm"]["repeats"]


def test_snakemake_script_writes_the_json(dirs, tmp_path):
    import runpy
    from pathlib import Path
    from types import SimpleNamespace

    root = Path(__file__).resolve().parent.parent
    out, log = tmp_path / "bench" / "nf4.json", tmp_path / "logs" / "nf4.log"
    snakemake = SimpleNamespace(
        scriptdir=str(root / "scripts"),
        input=SimpleNamespace(model=str(dirs["nf4"]), baseline=str(dirs["baseline"])),
        params=SimpleNamespace(
            settings=_with(PREFILL_ONLY, prefill={"modes": ["eager"]}), device="cpu", retry=...
        ),
        output=[str(out)],
        log=[str(log)],
        wildcards=SimpleNamespace(arm="nf4"),
        resources=SimpleNamespace(gpu_mem_mb=0, attempt=1),
    )
    runpy.run_path(str(root / "scripts" / "benchmark.py"), init_globals={"snakemake": snakemake})
    result = json.loads(out.read_text())
    _validate(result)
    assert result["arm"] == "nf4" and result["device_kind"] == "cpu"
    assert "mode eager, scenario ('prefill', 8)" in log.read_text()


def test_isolated_job_measures_the_baseline_at_the_arms_largest_batch(dirs):
    """On the GPU the search runs in child processes (isolate: auto); forced here on the CPU."""
    settings = _with(
        PREFILL_ONLY,
        largest_batch={"modes": ["eager"], "isolate": True, "limit": 2, "prompt_length": 8,
                       "new_tokens": 2, "repeats": 1},
    )  # fmt: skip
    r = bm.run_benchmark(dirs["nf4"], dirs["baseline"], settings, device="cpu")
    _validate(r)
    lb = r["largest_batch"]["eager"]
    assert lb["batch_size"] == 2 and lb["baseline"]["fits"] is True
    assert lb["baseline"]["batch_size"] == 2
    assert lb["throughput_ratio"] == pytest.approx(
        lb["throughput"]["tokens_per_s"]["median"]
        / lb["baseline"]["throughput"]["tokens_per_s"]["median"]
    )


def test_largest_batch_in_a_child_process_survives_a_dying_child(tmp_path):
    """A search whose process dies (here: the arm cannot even load) is recorded, not raised."""
    settings = bm.resolve_settings(bm.SMALL_SETTINGS)
    result = largest_batch_isolated(
        tmp_path / "no-such-arm", "eager", settings, torch.device("cpu")
    )
    assert result["supported"] is False
    assert "exit code 1 loading the arm" in result["reason"] and "no-such-arm" in result["reason"]
    assert result["batch_size"] == 0 and result["probes"] == []


# A kernel that ends the process at some batch instead of raising: bitsandbytes' int8 kernel does
# so on the H100 at batch 2048 ("Error invalid argument at line 421 in file /src/csrc/ops.cu").
# Injected into the search's child processes (and only there) by a sitecustomize on PYTHONPATH.
_DIE_ABOVE_CAP = """\
import os, sys, torch
_forward = torch.nn.Embedding.forward
def forward(self, ids):
    if ids.shape[0] > {cap}:
        sys.stderr.write("Error invalid argument at line 421 in file ops.cu\\n")
        sys.stderr.flush()
        os._exit(1)
    return _forward(self, ids)
torch.nn.Embedding.forward = forward
"""


def _kill_children_above(cap: int, tmp_path, monkeypatch) -> None:
    (tmp_path / "sitecustomize.py").write_text(_DIE_ABOVE_CAP.format(cap=cap))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))


def _rows_of_largest_batch(result: dict) -> list[dict]:
    """The benchmark table's rows of a bench JSON holding only this largest-batch result."""
    from quantstudy.aggregate import bench_rows

    return bench_rows({"arm": "x", "device_kind": "cpu", "device": {"name": "cpu"},
                       "models": {"arm": {"method": "baseline"}}, "modes": {},
                       "largest_batch": {"eager": result}})  # fmt: skip


def test_a_search_that_dies_keeps_the_largest_batch_that_ran(dirs, tmp_path, monkeypatch):
    _kill_children_above(2, tmp_path, monkeypatch)
    settings = bm.resolve_settings(
        {**bm.SMALL_SETTINGS, "largest_batch": {**bm.SMALL_SETTINGS["largest_batch"], "limit": 8}}
    )
    result = largest_batch_isolated(dirs["baseline"], "eager", settings, torch.device("cpu"))
    jsonschema.validate(
        {"eager": result},
        bm.BENCH_SCHEMA["properties"]["largest_batch"] | {"$defs": bm.BENCH_SCHEMA["$defs"]},
    )
    assert result["supported"] is True and result["batch_size"] == 2
    assert result["hit_limit"] is False and result["limit"] == 8
    assert [(p["batch_size"], p["fits"]) for p in result["probes"]] == [(1, True), (2, True)]
    stopped = result["stopped_by"]
    assert stopped["exit_code"] == 1
    assert "at batch 4 " in stopped["reason"] and "invalid argument" in stopped["reason"]
    # the second child measured the throughput at the largest batch that ran
    tps = result["throughput"]["tokens_per_s"]
    assert tps["n"] == settings["largest_batch"]["repeats"] and tps["median"] > 0
    (row,) = _rows_of_largest_batch(result)
    assert row["supported"] is True and row["batch_size"] == 2
    assert row["median"] == tps["median"] and row["reason"] == stopped["reason"]


def test_a_search_that_dies_at_the_first_batch_is_unsupported(dirs, tmp_path, monkeypatch):
    _kill_children_above(0, tmp_path, monkeypatch)
    settings = bm.resolve_settings(bm.SMALL_SETTINGS)
    result = largest_batch_isolated(dirs["baseline"], "eager", settings, torch.device("cpu"))
    assert result["supported"] is False and result["batch_size"] == 0
    assert "exit code 1 at batch 1 " in result["reason"]
    (row,) = _rows_of_largest_batch(result)  # recorded, not dropped
    assert row["supported"] is False and row["reason"] == result["reason"]


@pytest.mark.parametrize("cap,start,limit", [(37, 1, 4096), (5, 2, 64), (64, 1, 64), (0, 1, 8)])
def test_next_probe_replays_the_search(cap, start, limit):
    """Cut a recorded search after each probe: the replay names the batch that came next."""
    tried = []
    bm.largest_batch(lambda b: tried.append(b) or b <= cap, start=start, limit=limit)
    for k in range(len(tried) + 1):
        probes = [{"batch_size": b, "fits": b <= cap} for b in tried[:k]]
        expected = tried[k] if k < len(tried) else None
        assert next_probe(probes, start, limit) == expected


def test_largest_batch_in_a_child_process_finds_the_limit(dirs):
    settings = bm.resolve_settings(
        {
            **bm.SMALL_SETTINGS,
            "largest_batch": {**bm.SMALL_SETTINGS["largest_batch"], "modes": ["eager"]},
        }
    )
    result = largest_batch_isolated(dirs["nf4"], "eager", settings, torch.device("cpu"))
    assert result["supported"] is True
    jsonschema.validate(
        {"eager": result},
        bm.BENCH_SCHEMA["properties"]["largest_batch"] | {"$defs": bm.BENCH_SCHEMA["$defs"]},
    )
    assert result["batch_size"] == settings["largest_batch"]["limit"] and result["hit_limit"]
    assert [p["batch_size"] for p in result["probes"]] == [1, 2, 4]


def test_largest_batch_child_runs_from_a_script_main(dirs, tmp_path):
    """Under Snakemake the parent's __main__ is the job script: the child must not re-run it."""
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "job.py"
    script.write_text(
        "import json, sys, torch\n"
        "from quantstudy import benchmark as bm\n"
        "from quantstudy.benchmark.isolation import largest_batch_isolated\n"
        "if __name__ != '__main__':\n"
        "    raise SystemExit('the job script was re-run in the child')\n"
        "s = bm.resolve_settings({**bm.SMALL_SETTINGS, 'largest_batch': {**bm.SMALL_SETTINGS['largest_batch'], 'modes': ['eager']}})\n"
        f"r = largest_batch_isolated({str(dirs['baseline'])!r}, 'eager', s, torch.device('cpu'))\n"
        "print(json.dumps(r))\n"
    )
    root = str(Path(bm.__file__).resolve().parents[2])
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          env={**__import__("os").environ, "PYTHONPATH": root}, check=True)  # fmt: skip
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["supported"] is True and result["batch_size"] == 4


# --- the record: one reader and writer, the schema checked both ways --------------------------


def test_the_record_is_checked_when_written_and_read(nf4_result, tmp_path):
    from quantstudy import records
    from quantstudy.benchmark import record

    path = tmp_path / "bench" / "nf4.json"
    record.write(path, nf4_result)
    assert record.read(path) == json.loads(json.dumps(nf4_result))
    broken = json.loads(path.read_text())
    broken["models"]["arm"]["footprint"]["total_bytes"] = -1
    path.write_text(json.dumps(broken))
    with pytest.raises(record.InvalidRecord, match=r"nf4\.json.*models\.arm\.footprint"):
        record.read(path)
    # a record that does not match is not written, but kept beside for a look
    with pytest.raises(record.InvalidRecord):
        record.write(tmp_path / "bench" / "int8.json", broken)
    assert not (tmp_path / "bench" / "int8.json").exists()
    assert json.loads((tmp_path / "bench" / "int8.invalid.json").read_text()) == broken
    # a failed job's failure record: returned by read, left out by read_many, as records does
    failed = tmp_path / "bench" / "fp4.json"
    failed.write_text(json.dumps({"status": "failed", "stage": "benchmark", "arm": "fp4"}))
    assert records.is_failure(record.read(failed))
    record.write(path, nf4_result)
    assert [r["arm"] for r in record.read_many([failed, path])] == ["nf4"]


def test_reading_records_does_not_import_torch():
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys, quantstudy.aggregate, quantstudy.compare, quantstudy.report, "
        "quantstudy.benchmark.record; assert 'torch' not in sys.modules, 'torch imported'"
    )
    root = Path(bm.__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True)


def test_a_search_that_died_is_a_valid_record(tmp_path):
    """What a dead search records beside its reason (batch_size, limit, probes) is in the schema,
    so the job's record is written, not refused."""
    settings = bm.resolve_settings(bm.SMALL_SETTINGS)
    result = largest_batch_isolated(
        tmp_path / "no-such-arm", "eager", settings, torch.device("cpu")
    )
    assert set(result) == {"supported", "reason", "batch_size", "limit", "probes"}
    jsonschema.validate(
        {"eager": result},
        bm.BENCH_SCHEMA["properties"]["largest_batch"] | {"$defs": bm.BENCH_SCHEMA["$defs"]},
    )
