"""GGUF arms on the tiny model: llama.cpp's converter and quantizer build them, the gguf package
verifies them, llama.cpp evaluates them through lm-eval's HFLM, and they pair with the baseline.

The references are independent of the code under test: the tiny source's own safetensors
weights, transformers' logits for the same token ids, the gguf package's reading of each file,
and llama.cpp's own tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from quantstudy.arms import parse_arm
from quantstudy.config import ConfigError
from quantstudy.study import Study

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is installed by make install")

from quantstudy import gguf  # noqa: E402
from quantstudy.quantize import quantize_arm  # noqa: E402

TEXT = 'Héllo wörld 🚀 \t\n  tabs, ▁spaces \' quotes "x" 3.14 — and the capital of France is Paris.'


@pytest.fixture(scope="module")
def arms(tiny_source, tmp_path_factory) -> dict[str, Path]:
    """The tiny source as a baseline and as GGUF arms: F32 (unquantized), Q8_0 and Q4_K_M."""
    out = tmp_path_factory.mktemp("gguf-arms")
    specs = {
        "fp32": {"method": "baseline", "dtype": "fp32"},
        "f32": {"method": "gguf", "quant_type": "F32", "dtype": "fp32"},
        "q8": {"method": "gguf", "quant_type": "Q8_0"},
        "q4km": {"method": "gguf", "quant_type": "Q4_K_M"},
    }
    calib = {"path": str(ROOT_CALIBRATION), "num_samples": 4, "seq_len": 32}
    specs["q4km_im"] = {"method": "gguf", "quant_type": "Q4_K_M", "calibration": calib}
    for name, spec in specs.items():
        quantize_arm(parse_arm(name, spec), tiny_source, out / name)
    return {name: out / name for name in specs}


def _record(arm_dir: Path) -> dict:
    return json.loads((arm_dir / "quantize.json").read_text())


# --- the tokenizer that llama.cpp's converter reads --------------------------------------------


def test_the_gguf_tokenizer_is_saved_as_byte_level_bpe_and_encodes_as_transformers_read_it(
    tokenizer_dir,
):
    from transformers import AutoTokenizer

    from quantstudy.config import resolve_path
    from tests.conftest import GGUF

    spec = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    assert spec["model"]["byte_fallback"] is False
    assert spec["decoder"]["type"] == "ByteLevel"
    path = resolve_path(GGUF["path"], GGUF["python_package"])
    raw = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)  # transformers' own
    saved = AutoTokenizer.from_pretrained(tokenizer_dir)
    text = TEXT + (ROOT_CALIBRATION.read_text()[:5000])
    ids = raw(text, add_special_tokens=False).input_ids
    assert saved(text, add_special_tokens=False).input_ids == ids
    assert saved.decode(ids) == raw.decode(ids) == text


ROOT_CALIBRATION = Path(__file__).resolve().parent.parent / "config" / "calibration" / "demo.txt"


def test_the_converter_writes_a_gpt2_vocabulary_that_llama_cpp_tokenizes_like_transformers(arms):
    from gguf import GGUFReader
    from transformers import AutoTokenizer

    reader = GGUFReader(str(arms["q8"] / gguf.MODEL_FILE))
    assert reader.fields["tokenizer.ggml.model"].contents() == "gpt2"
    assert reader.fields["tokenizer.ggml.pre"].contents() == "smollm"
    llm = llama_cpp.Llama(str(arms["q8"] / gguf.MODEL_FILE), vocab_only=True, verbose=False)
    tok = AutoTokenizer.from_pretrained(arms["q8"])
    ids = tok(TEXT, add_special_tokens=False).input_ids
    assert llm.tokenize(TEXT.encode(), add_bos=False, special=False) == ids


# --- build and verification --------------------------------------------------------------------


def test_q8_0_holds_every_matrix_as_q8_0_within_its_rounding_of_the_source_weights(
    arms, tiny_source
):
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from safetensors.torch import load_file

    rec = _record(arms["q8"])
    reader = GGUFReader(str(arms["q8"] / gguf.MODEL_FILE))
    matrices = [t for t in reader.tensors if len(t.shape) >= 2]
    assert {t.tensor_type.name for t in matrices} == {"Q8_0"}
    assert rec["verified"]["types"] == {"Q8_0": len(matrices)}
    assert rec["verified"]["file_type"] == "MOSTLY_Q8_0"
    assert rec["bits"] == 8.5 and 8.4 < rec["verified"]["bits_per_weight"] < 8.6
    # ffn_down is written as the source holds it (q and k are permuted by the converter)
    source = load_file(str(tiny_source / "model.safetensors"))[
        "model.layers.1.mlp.down_proj.weight"
    ]
    t = next(t for t in matrices if t.name == "blk.1.ffn_down.weight")
    got = dequantize(np.asarray(t.data), t.tensor_type).reshape(source.shape)
    w = source.numpy().astype(np.float64)
    # Q8_0: 32-wide blocks of round(w / d), d = absmax / 127 stored in fp16, from the fp16 file:
    # every element within half a step, plus the fp16 roundings of d (127 steps of at most
    # 2^-11 of d) and of w itself (2^-11 of |w|)
    w, got = w.reshape(-1, 32), got.reshape(-1, 32)
    step = np.abs(w).max(axis=1, keepdims=True) / 127
    bound = step * (0.5 + 127 * 2**-11) + np.abs(w) * 2**-11
    assert np.all(np.abs(got - w) <= bound * 1.001)
    assert np.abs(got - w).max() > 0.25 * step.max()  # it is rounded to 8 bits, not left as is


def test_q4_k_m_rows_narrower_than_a_k_block_fall_back_and_the_record_says_which(arms):
    """The tiny model's rows are 64 wide: k-quants need 256, so llama.cpp writes legacy 32-wide
    types; verification accepts exactly the family, and the record lists the real mix."""
    from gguf import GGUFReader

    rec = _record(arms["q4km"])
    reader = GGUFReader(str(arms["q4km"] / gguf.MODEL_FILE))
    counts: dict[str, int] = {}
    for t in reader.tensors:
        if len(t.shape) >= 2:
            counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
    assert rec["verified"]["types"] == dict(sorted(counts.items()))
    assert set(counts) <= gguf.allowed_types("Q4_K_M")
    assert not set(counts) & {"Q4_K", "Q5_K", "Q6_K"}  # no 256-wide block fits a 64-wide row
    assert rec["verified"]["file_type"] == "MOSTLY_Q4_K_M"
    assert rec["verified"]["bits_per_weight"] < _record(arms["q8"])["verified"]["bits_per_weight"]


def test_an_arm_with_calibration_text_records_its_importance_matrix(arms):
    plain, weighted = _record(arms["q4km"]), _record(arms["q4km_im"])
    assert plain["verified"]["imatrix"] is None
    im = weighted["verified"]["imatrix"]
    assert im["samples"] == 4 and 4 < im["tokens"] <= 4 * 32
    assert im["tensors"] == plain["verified"]["weight_matrices"] - 1  # all but token_embd
    assert weighted["sha256"] != plain["sha256"]


def test_verification_refuses_a_file_that_is_not_what_the_arm_claims(arms, tmp_path):
    q8, q4 = arms["q8"] / gguf.MODEL_FILE, arms["q4km"] / gguf.MODEL_FILE
    claim_q4 = parse_arm("x", {"method": "gguf", "quant_type": "Q4_K_M"})
    with pytest.raises(AssertionError, match="general.file_type is MOSTLY_Q8_0"):
        gguf.verify_gguf(claim_q4, q8, q8)
    # the right claim, but checked against another model's weights: every tensor is far off
    other = tmp_path / "other.gguf"
    gguf.quantize_file(q8, other, "Q8_0", 1)
    claim_q8 = parse_arm("x", {"method": "gguf", "quant_type": "Q8_0"})
    gguf.verify_gguf(claim_q8, q8, other)  # a requantized Q8_0 is within Q8_0's bound
    with pytest.raises(AssertionError, match="relative RMS"):
        gguf.verify_gguf(claim_q8, q8, _shuffled(q4, tmp_path))


def _shuffled(path: Path, tmp_path: Path) -> Path:
    """A copy of a GGUF file whose tensor data are reversed byte for byte (same types, shapes)."""
    from gguf import GGUFReader

    out = tmp_path / "shuffled.gguf"
    out.write_bytes(path.read_bytes())
    data = bytearray(out.read_bytes())
    for t in GGUFReader(str(path)).tensors:
        if len(t.shape) >= 2:
            start, end = t.data_offset, t.data_offset + t.n_bytes
            data[start:end] = data[start:end][::-1]
    out.write_bytes(bytes(data))
    return out


def test_the_importance_matrix_reaches_llama_cpp_and_lowers_the_error_it_weights(
    tiny_source, calibration_file, tmp_path
):
    """Quantized with the matrix, each weight matrix's importance-weighted squared error
    (sum over rows and columns of imp_j (w_ij - q_ij)^2, q dequantized by the gguf package) is
    lower than without it: llama.cpp got every entry under the right name and width."""
    from gguf import GGUFReader

    texts = [t for t in calibration_file.read_text().splitlines() if t.strip()][:8]
    unquantized = tmp_path / "f16.gguf"
    gguf.convert(tiny_source, unquantized, "fp16")
    matrix, facts = gguf.importance_matrix(tiny_source, texts, 64, unquantized)
    table = gguf.tensor_table(unquantized)
    # every weight matrix but the input embedding, with one weight per input column
    expected = {n for n, t in table.items() if len(t["shape"]) == 2 and n != "token_embd.weight"}
    assert set(matrix) == expected and facts["tensors"] == len(expected)
    assert all(matrix[n].shape == (table[n]["shape"][0],) for n in expected)
    assert all((v > 0).all() for v in matrix.values()) and facts["tokens"] > 8
    plain, weighted = tmp_path / "plain.gguf", tmp_path / "weighted.gguf"
    gguf.quantize_file(unquantized, plain, "Q4_0", 1)
    gguf.quantize_file(unquantized, weighted, "Q4_0", 1, matrix)
    ref, a, b = (GGUFReader(str(p)) for p in (unquantized, plain, weighted))
    better = []
    for name in sorted(expected):
        if table[name]["type"] == "F32" or gguf.tensor_table(plain)[name]["type"] != "Q4_0":
            continue
        w = gguf._dequantized_rows(ref, name, 10**6)
        errors = [
            float((matrix[name] * (gguf._dequantized_rows(r, name, 10**6) - w) ** 2).sum())
            for r in (a, b)
        ]
        better.append(errors[1] < errors[0])
    assert len(better) >= 10 and all(better), better


def test_records_hash_the_gguf_file_and_the_loader_refuses_a_changed_one(arms, tmp_path):
    import shutil

    from quantstudy.loading import load_arm
    from quantstudy.provenance import WeightsChanged, sha256_file

    rec = _record(arms["q8"])
    assert rec["sha256"] == {gguf.MODEL_FILE: sha256_file(arms["q8"] / gguf.MODEL_FILE)}
    assert rec["memory_bytes"]["total"] == sum(
        t["bytes"] for t in gguf.tensor_table(arms["q8"] / gguf.MODEL_FILE).values()
    )
    copy = shutil.copytree(arms["q8"], tmp_path / "q8")
    with open(copy / gguf.MODEL_FILE, "r+b") as f:
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 1]))
    with pytest.raises(WeightsChanged, match="model.gguf"):
        load_arm(copy, "cpu")


# --- running it ------------------------------------------------------------------------------


def test_an_unquantized_gguf_arm_scores_like_transformers_on_the_same_token_ids(arms):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from quantstudy.loading import load_arm

    tok = AutoTokenizer.from_pretrained(arms["fp32"])
    ids = tok(TEXT, add_special_tokens=False).input_ids
    hf = AutoModelForCausalLM.from_pretrained(arms["fp32"], dtype=torch.float32)
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0]
    model = load_arm(arms["f32"], "cpu")
    got = model(torch.tensor([ids])).logits[0]
    assert got.shape == ref.shape
    assert torch.allclose(got, ref, atol=1e-3, rtol=1e-3), float((got - ref).abs().max())
    q8 = load_arm(arms["q8"], "cpu")(torch.tensor([ids])).logits[0]
    assert (q8 - ref).abs().max() > (got - ref).abs().max()  # quantization moves it more


def test_faithfulness_reads_a_gguf_arm_through_llama_cpp(arms):
    """KL(baseline || arm) per token from the log-probabilities the faithfulness jobs compute:
    about 0 for the unquantized GGUF arm (llama.cpp's float rounding only), larger for Q8_0."""
    from quantstudy.faithfulness import window_logprobs

    windows = torch.randint(0, 49152, (2, 24), generator=torch.Generator().manual_seed(0))
    (base,) = window_logprobs(arms["fp32"], windows, 8, device="cpu", batch_size=2)
    kl = {}
    for arm in ("f32", "q8"):
        record: dict = {}
        (got,) = window_logprobs(arms[arm], windows, 8, device="cpu", batch_size=2, record=record)
        assert got.shape == base.shape == (2, 8, 49152) and record["backend"] == "llama.cpp"
        kl[arm] = float((base.exp() * (base - got)).sum(-1).mean())
    assert kl["f32"] < 1e-6 < kl["q8"], kl


@pytest.fixture(scope="module")
def evaluated(arms, tmp_path_factory):
    """Both task kinds, a few items, on the baseline and the GGUF arms (same batch size)."""
    from quantstudy.evaluate import evaluate
    from quantstudy.study import Task

    out = tmp_path_factory.mktemp("gguf-eval")
    root = Path(__file__).resolve().parent.parent
    done = {}
    for arm in ("fp32", "f32", "q8"):
        for task, limit in (("demo_capitals", 8), ("demo_passage_qa", 4)):
            spec = Task.parse({"limit": limit, "batch_size": 4})
            summary = evaluate(
                arms[arm], arm, task, spec, 4, str(root / "tasks"),
                out / arm / f"{task}.json", out / arm / f"{task}.samples.jsonl",
            )  # fmt: skip
            samples = [json.loads(x) for x in (out / arm / f"{task}.samples.jsonl").open()]
            done[arm, task] = (summary, samples)
    return done


@pytest.mark.parametrize("task", ["demo_capitals", "demo_passage_qa"])
def test_gguf_arms_see_the_same_items_and_prompts_and_f32_answers_as_transformers(evaluated, task):
    base = evaluated["fp32", task][1]
    for arm in ("f32", "q8"):
        summary, samples = evaluated[arm, task]
        assert summary["batch_size_used"] == evaluated["fp32", task][0]["batch_size_used"]
        assert [(s["doc_id"], s["prompt_hash"], s["target_hash"]) for s in samples] == [
            (s["doc_id"], s["prompt_hash"], s["target_hash"]) for s in base
        ]
    for b, f in zip(base, evaluated["f32", task][1]):
        if task == "demo_capitals":  # log-likelihoods of each choice
            got = np.array([r[0] for r in f["response"]["none"]], dtype=float)
            ref = np.array([r[0] for r in b["response"]["none"]], dtype=float)
            assert np.allclose(got, ref, atol=2e-3), (got, ref)
        else:  # greedy generations
            assert f["response"] == b["response"]


def test_gguf_samples_pair_with_the_baseline_in_the_comparison(evaluated, tmp_path):
    """The GGUF arms' samples files go through the comparison's own reader and pairing: every
    item pairs, and the paired difference is the mean of the per-item differences."""
    from quantstudy import stats
    from quantstudy.compare import load_samples

    files = []
    for arm in ("fp32", "q8"):
        for task in ("demo_capitals", "demo_passage_qa"):
            path = tmp_path / "eval" / arm / f"{task}.samples.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps(r) + "\n" for r in evaluated[arm, task][1]))
            files.append(path)
    df = load_samples(files)
    frame = stats.paired_frame(df, "demo_capitals", "acc", "q8", "fp32")
    base = {s["doc_id"]: s["metrics"]["acc"] for s in evaluated["fp32", "demo_capitals"][1]}
    q8 = {s["doc_id"]: s["metrics"]["acc"] for s in evaluated["q8", "demo_capitals"][1]}
    assert list(frame["doc_id"]) == sorted(base) and list(frame["arm"]) == [
        q8[d] for d in sorted(q8)
    ]
    _, rows = stats.compare(df, "fp32", n_boot=200, n_perm=200)
    row = rows[
        (rows["arm"] == "q8") & (rows["task"] == "demo_capitals") & (rows["metric"] == "acc")
    ]
    assert len(row) == 1 and int(row["n"].iloc[0]) == len(base)
    assert row["diff"].iloc[0] == pytest.approx(np.mean([q8[d] - base[d] for d in base]))


def test_the_benchmark_runs_a_gguf_arm_in_llama_cpp_beside_the_transformers_baseline(arms):
    from quantstudy.aggregate import bench_rows
    from quantstudy.benchmark import record
    from quantstudy.benchmark.job import run_benchmark
    from quantstudy.benchmark.settings import SMALL_SETTINGS

    rec = run_benchmark(arms["q8"], arms["fp32"], SMALL_SETTINGS, "cpu")
    record.validate(rec)
    assert rec["schema"] == record.SCHEMA_ID == "quant-study/bench/3"
    arm = rec["models"]["arm"]
    assert arm["runtime"] == "llama.cpp" and arm["dtype"] == "gguf:Q8_0"
    assert arm["footprint"]["total_bytes"] == _record(arms["q8"])["memory_bytes"]["total"]
    assert arm["process_rss_bytes"] > arm["footprint"]["total_bytes"]
    # untied embeddings (the tiny model's): a decode step reads one row of token_embd
    embd = gguf.tensor_table(arms["q8"] / gguf.MODEL_FILE)["token_embd.weight"]["bytes"]
    assert arm["weight_bytes_excluded"] == {"untied_input_embedding": embd}
    assert arm["weight_bytes_per_token"] == arm["footprint"]["total_bytes"] - embd
    # llama.cpp runs one graph, one sequence: eager only, batch 1, no largest-batch search
    assert set(rec["modes"]) == {"eager"} and rec["largest_batch"] == {}
    assert rec["settings"]["throughput"]["batch_sizes"] == [1]
    eager = rec["modes"]["eager"]
    assert eager["supported"] and eager["description"].startswith("arm: llama.cpp")
    # both measured in the same job (ms per token is a difference of two timings: on a busy
    # 2-core machine its median can fall below 0 for the tiny model, so check what it comes from)
    for side in ("arm", "baseline"):
        assert eager["decode"][side]["generate_ms"]["median"] > 0
        assert eager["decode"][side]["first_token_ms"]["median"] > 0
    rows = bench_rows(rec)
    assert {r["scenario"] for r in rows} == {"prefill", "decode", "throughput"}
    assert all(r["method"] == "gguf" for r in rows)


# --- config ------------------------------------------------------------------------------------


def _study(arms: dict, **extra) -> dict:
    return {"study": "s", "model": {"source": "local", "path": "m"}, "arms": arms,
            "tasks": {"demo_capitals": {}}, **extra}  # fmt: skip


def test_a_gguf_arm_cannot_be_the_baseline():
    from quantstudy.config import typed

    config = _study({"g": {"method": "gguf"}, "b": {"method": "baseline"}}, baseline="g")
    with pytest.raises(ConfigError, match="baseline: 'g' is a gguf arm"):
        typed(config)
    assert isinstance(typed(_study({"b": {"method": "baseline"}, "g": {"method": "gguf"}})), Study)


def test_an_unquantized_gguf_arm_is_converted_in_its_own_dtype():
    with pytest.raises(ConfigError, match="arms.g.dtype: an unquantized BF16 GGUF arm"):
        parse_arm("g", {"method": "gguf", "quant_type": "BF16", "dtype": "fp16"})
    with pytest.raises(ConfigError, match="arms.g.quant_type: 'Q4_K_Q'"):
        parse_arm("g", {"method": "gguf", "quant_type": "Q4_K_Q"})
    assert parse_arm("g", {"method": "gguf", "quant_type": "BF16", "dtype": "bf16"}).bits == 16


def test_the_preflight_names_the_gguf_arm_when_llama_cpp_is_missing(tmp_path, monkeypatch):
    from quantstudy.config import typed
    from quantstudy.preflight import check_llama_cpp

    study = typed(_study({"b": {"method": "baseline"}, "q": {"method": "gguf"}}))
    check_llama_cpp(study)  # installed here
    monkeypatch.setenv(gguf.LLAMA_CPP_DIR_ENV, str(tmp_path))
    with pytest.raises(ConfigError, match=r"arms.q: a gguf arm, but llama.cpp's convert_hf_to"):
        check_llama_cpp(study)
