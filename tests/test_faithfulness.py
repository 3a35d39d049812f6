"""Agreement with the baseline (quantstudy.faithfulness): the reference cache, the per-token KL,
agreement and log-probabilities, the top-k bound, and the summary, against direct computations.
"""

from __future__ import annotations

import json
import math
import re
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats as sps

from quantstudy import faithfulness as fa
from quantstudy.study import Faithfulness

TEXT = (
    "The river rises in the hills and runs north through farmland before it meets the sea. "
    "Its valley was settled early, and the old road still follows the water for most of its "
    "length. Mills stood on it once; today the banks are a walking trail and a nature reserve.\n"
) * 12


def spec(path, **kw) -> Faithfulness:
    settings = {"enabled": True, "path": str(path), "num_tokens": 64, "context_length": 32,
                "stride": 16, "top_k": 16, "batch_size": 3} | kw  # fmt: skip
    return Faithfulness.parse(settings, ("faithfulness",))


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "heldout.txt"
    path.write_text(TEXT)
    return path


@pytest.fixture(scope="module")
def perturbed(tiny_source, tmp_path_factory):
    """The tiny source with one layer's weights scaled (layer 0's attention output, × 3)."""
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("perturbed") / "arm"
    shutil.copytree(tiny_source, out)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    with torch.no_grad():
        model.model.layers[0].self_attn.o_proj.weight.mul_(3.0)
    model.save_pretrained(out)
    (out / "source.json").unlink()
    return out


def run(tmp_path, baseline, arm, text_file, **kw):
    s = spec(text_file, **kw)
    ref_npz, ref_json = tmp_path / "reference.npz", tmp_path / "reference.json"
    fa.build_reference(baseline, s, ref_npz, ref_json, device="cpu")
    summary = fa.compare_arm(
        arm, "arm", ref_npz, ref_json, s.batch_size, 0.05,
        tmp_path / "arm.json", tmp_path / "arm.tokens.npz", device="cpu",
    )  # fmt: skip
    with np.load(tmp_path / "arm.tokens.npz") as f:
        tokens = {k: f[k] for k in f.files}
    return summary, tokens, fa.load_reference(ref_npz)


def direct_logprobs(model_dir, windows: np.ndarray, stride: int) -> torch.Tensor:
    """Full-vocabulary log-probabilities of each window's last `stride` tokens, float64, from a
    plain forward over the whole window (no logits_to_keep, no batching)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for w in windows:
            logits = model(torch.as_tensor(w[None], dtype=torch.long)).logits[0].double()
            out.append(torch.log_softmax(logits, -1)[-stride - 1 : -1])
    return torch.cat(out)


# --------------------------------------------------------------------------- the windows


def test_windows_are_the_tokenizers_ids_every_stride(tiny_source, text_file, tmp_path):
    from transformers import AutoTokenizer

    s = spec(text_file)
    fa.build_reference(tiny_source, s, tmp_path / "r.npz", tmp_path / "r.json", device="cpu")
    ref = fa.load_reference(tmp_path / "r.npz")
    text = "\n\n".join(line.strip() for line in TEXT.splitlines() if line.strip())
    ids = AutoTokenizer.from_pretrained(tiny_source)(text, add_special_tokens=False)["input_ids"]
    assert ref["windows"].shape == (4, 32)
    for i, w in enumerate(ref["windows"]):
        assert w.tolist() == ids[16 * i : 16 * i + 32]
    # each token is scored once: the targets are ids[16:80] in order, 16 per window
    assert ref["targets"].tolist() == ids[16:80]
    assert ref["window"].tolist() == [i for i in range(4) for _ in range(16)]
    record = json.loads((tmp_path / "r.json").read_text())
    assert record["scored_tokens"] == 64 and record["top_k"] == 16
    assert record["code_version"]["version"]


@pytest.mark.parametrize(
    ("ids", "kw", "words"),
    [
        (range(40), {"num_tokens": 64, "context_length": 32, "stride": 16}, "need 80 tokens"),
        ([], {"num_tokens": 16, "context_length": 32, "stride": 16}, "holds only 0"),
        (range(99), {"num_tokens": 8, "context_length": 32, "stride": 16}, "fewer than one"),
        (range(99), {"num_tokens": 64, "context_length": 16, "stride": 16}, "faithfulness.stride"),
    ],
)
def test_too_little_text_or_bad_windows_name_the_field(ids, kw, words):
    with pytest.raises(ValueError, match="faithfulness") as e:
        fa.token_windows(list(ids), where="'x.txt'", **kw)
    assert words in str(e.value)


def test_config_errors_name_the_field(tmp_path):
    from quantstudy.config import ConfigError

    with pytest.raises(ConfigError, match=r"faithfulness\.stride: 32 must be below"):
        spec(tmp_path / "x", context_length=32, stride=32)
    with pytest.raises(ConfigError, match=r"faithfulness\.num_tokens: 8 is fewer"):
        spec(tmp_path / "x", num_tokens=8)


def test_empty_text_is_an_error_naming_the_file(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(ValueError, match="empty.txt.*holds no text"):
        fa.heldout_text(spec(empty))


# --------------------------------------------------------------------------- the arm jobs


def test_an_arm_identical_to_the_baseline_agrees_exactly(tiny_source, text_file, tmp_path):
    summary, tokens, _ = run(tmp_path, tiny_source, tiny_source, text_file)
    assert (tokens["kl"] == 0).all() and tokens["agree"].all()
    assert (tokens["base_target_logp"] == tokens["arm_target_logp"]).all()
    assert summary["kl_mean"] == 0 and summary["kl_max"] == 0 and summary["kl_se"] == 0
    assert summary["top1_agreement"] == 1 and summary["top1_agreement_ci_high"] == 1
    # all 64 tokens agree: the interval is never narrower than 64 unchanged items can rule out
    assert summary["top1_agreement_ci_low"] == pytest.approx(0.025 ** (1 / 64))
    assert summary["ppl_ratio"] == 1 and summary["dp_mean"] == 0 and summary["dp_rms"] == 0
    assert summary["ppl_arm"] == summary["ppl_baseline"]


def test_a_scaled_layer_gives_the_kl_of_a_direct_computation(
    tiny_source, perturbed, text_file, tmp_path
):
    """top_k ≥ the vocabulary: the cached KL is the full KL, equal to KL computed directly from
    the two models' whole-window forwards in float64 on the same tokens."""
    summary, tokens, ref = run(tmp_path, tiny_source, perturbed, text_file, top_k=10**6)
    logp = direct_logprobs(tiny_source, ref["windows"], 16)
    logq = direct_logprobs(perturbed, ref["windows"], 16)
    kl = (logp.exp() * (logp - logq)).sum(-1).numpy()
    assert kl.mean() > 1e-3  # the perturbation is visible
    # float32 log-probabilities near log(1/49152) ≈ -10.8 resolve 1e-6: the KL of a token sums
    # 49152 such differences weighted by p, so it is good to a few 1e-6 (0.3 % of these KLs)
    np.testing.assert_allclose(tokens["kl"], kl, rtol=0, atol=4e-6)
    assert (tokens["kl_gap_bound"] == 0).all()
    np.testing.assert_array_equal(tokens["agree"], logp.argmax(-1) == logq.argmax(-1))
    targets = torch.as_tensor(ref["targets"], dtype=torch.long)[:, None]
    np.testing.assert_allclose(tokens["arm_target_logp"], logq.gather(1, targets)[:, 0], atol=1e-5)
    np.testing.assert_allclose(tokens["base_target_logp"], logp.gather(1, targets)[:, 0], atol=1e-5)
    assert summary["kl_mean"] == pytest.approx(kl.mean(), rel=1e-3)
    assert summary["kl_max"] == pytest.approx(kl.max(), rel=1e-3)


def test_the_top_k_kl_is_within_its_stated_bound_of_the_full_kl(
    tiny_source, perturbed, text_file, tmp_path
):
    """0 ≤ full KL − top-k KL ≤ kl_gap_bound, token by token, on the perturbed arm (k = 16 of
    49152 tokens of a random model: nearly all mass outside the top-k)."""
    _, full, _ = run(tmp_path, tiny_source, perturbed, text_file, top_k=10**6)
    _, topk, _ = run(tmp_path, tiny_source, perturbed, text_file, top_k=16)
    gap = full["kl"].astype(np.float64) - topk["kl"]
    assert gap.min() >= -1e-6
    assert (gap <= topk["kl_gap_bound"] + 1e-6).all()


# --------------------------------------------------------------------------- per token, exactly


def peaky(n: int, vocab: int, seed: int, temperature: float = 0.3) -> torch.Tensor:
    """Log-probabilities of n tokens shaped like a language model's: a few likely tokens."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, vocab, generator=g, dtype=torch.float64) / temperature
    return torch.log_softmax(logits, -1)


def ref_for(logp: torch.Tensor, k: int, targets: torch.Tensor | None = None) -> dict:
    targets = torch.zeros(logp.shape[0], dtype=torch.int32) if targets is None else targets
    return fa.reference_stats(logp, targets, k) | {"targets": targets}


@pytest.mark.parametrize("k", [1, 4, 32, 199, 200, 1000])
def test_top_k_bound_on_lm_like_distributions(k):
    """Over 2000 tokens of peaky distributions and arms near them: 0 ≤ gap ≤ bound, the bound
    is 0 (and the KL exact) once k reaches the vocabulary (200)."""
    logp = peaky(2000, 200, 0)
    noise = torch.randn(logp.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    logq = torch.log_softmax(logp + 0.3 * noise, -1)
    ref = ref_for(logp, k)
    out = fa.arm_stats(logq, ref)
    gap = fa.full_kl(logp, logq) - out["kl"]
    assert gap.min() >= -1e-12
    assert (gap <= out["kl_gap_bound"] + 1e-12).all()
    if k >= 200:
        assert (out["kl_gap_bound"] == 0).all() and gap.abs().max() < 1e-12


def test_the_bound_is_tight_where_the_tail_is_one_token():
    """With one token outside the top-k the coarsened distributions are the full ones: gap 0,
    and the bound (all mass p_R on that one token) is 0 too."""
    logp, logq = peaky(50, 8, 2), peaky(50, 8, 3)
    out = fa.arm_stats(logq, ref_for(logp, 7))
    torch.testing.assert_close(out["kl"], fa.full_kl(logp, logq).clamp_min(0))
    assert out["kl_gap_bound"].abs().max() < 1e-12


def test_zero_remaining_mass_and_ties():
    """A baseline whose support is smaller than k leaves no mass outside its top-k (rest -inf,
    no NaN); tied maxima are broken the same way (first index) for baseline and arm."""
    logp = torch.log_softmax(torch.tensor([[2.0, 2.0, 0.0, -math.inf, -math.inf]]), -1)
    ref = ref_for(logp, 4)
    assert ref["rest_logp"].item() == -math.inf and ref["tail_plogp"].item() == 0
    out = fa.arm_stats(logp.clone(), ref)
    assert out["kl"].item() == 0 and out["kl_gap_bound"].item() == 0
    assert ref["argmax"].item() == 0 and out["agree"].item()
    other = torch.log_softmax(torch.tensor([[1.0, 3.0, 0.0, 0.0, 0.0]]), -1)
    out = fa.arm_stats(other, ref)
    assert not out["agree"].item() and math.isfinite(out["kl"].item())
    assert out["kl"].item() == pytest.approx(fa.full_kl(logp, other).item(), rel=1e-6)


def test_an_arm_with_another_vocabulary_is_refused():
    ref = ref_for(peaky(3, 50, 0), 5)
    with pytest.raises(ValueError, match="share the tokenizer"):
        fa.arm_stats(peaky(3, 20, 1), ref)


# --------------------------------------------------------------------------- the summary


def test_summary_against_scipy_over_windows():
    rng = np.random.default_rng(0)
    window = np.repeat(np.arange(6), 10)
    base = rng.normal(-2.0, 0.5, 60)
    arm = base - rng.normal(0.05, 0.1, 60)
    tokens = {
        "window": window,
        "kl": rng.exponential(0.01, 60),
        "agree": rng.random(60) < 0.9,
        "base_target_logp": base,
        "arm_target_logp": arm,
        "kl_gap_bound": np.zeros(60),
    }
    s = fa.summarize(tokens, 0.05)
    df = pd.DataFrame(tokens).assign(d=base - arm, dp=np.exp(arm) - np.exp(base))
    per = df.groupby("window").mean()
    assert s["kl_mean"] == pytest.approx(tokens["kl"].mean())
    assert s["kl_se"] == pytest.approx(sps.sem(per["kl"]))
    assert s["kl_p99"] == pytest.approx(np.percentile(tokens["kl"], 99))
    low, high = sps.t.interval(0.95, 5, loc=per["d"].mean(), scale=sps.sem(per["d"]))
    assert s["ppl_ratio"] == pytest.approx(math.exp(per["d"].mean()))
    assert (s["ppl_ratio_ci_low"], s["ppl_ratio_ci_high"]) == pytest.approx(
        (math.exp(low), math.exp(high))
    )
    assert s["ppl_ratio"] == pytest.approx(s["ppl_arm"] / s["ppl_baseline"])
    low, high = sps.t.interval(0.95, 5, loc=per["agree"].mean(), scale=sps.sem(per["agree"]))
    assert s["top1_agreement_ci_low"] == pytest.approx(max(low, 0))
    assert s["top1_agreement_ci_high"] == pytest.approx(min(high, 1))
    assert s["dp_rms"] == pytest.approx(math.sqrt((df["dp"] ** 2).mean()))
    assert s["n_windows"] == 6 and "note" not in s


def test_one_window_has_no_interval():
    tokens = {k: np.zeros(8) for k in fa.TOKEN_ARRAYS} | {"agree": np.ones(8, bool)}
    s = fa.summarize(tokens, 0.05)
    assert math.isnan(s["kl_se"]) and math.isnan(s["ppl_ratio_ci_low"])
    assert s["top1_agreement"] == 1 and "one window" in s["note"]


# --------------------------------------------------------------------------- the config checks


def test_the_held_out_file_is_checked_before_any_job(tmp_path, tokenizer_dir, calibration_file):
    from quantstudy import config as qconfig
    from tests.conftest import ROOT, tiny_config

    def check(faithfulness):
        config = tiny_config(tokenizer_dir, calibration_file) | {"faithfulness": faithfulness}
        qconfig.validate_schema(config)
        qconfig.check(qconfig.typed(config), root=ROOT)

    check({"enabled": True, "path": str(calibration_file.parent / "make_demo_calibration.py")})
    check({"enabled": False, "path": str(tmp_path / "absent.txt")})  # not measured: not read
    with pytest.raises(
        qconfig.ConfigError, match=r"^faithfulness\.path: .*absent.txt.* not a file"
    ):
        check({"enabled": True, "path": str(tmp_path / "absent.txt")})
    (tmp_path / "blank.txt").write_text("\n\n")
    with pytest.raises(qconfig.ConfigError, match=r"^faithfulness\.path: .*holds no text"):
        check({"enabled": True, "path": str(tmp_path / "blank.txt")})
    with pytest.raises(qconfig.ConfigError, match=r"arms\.gptq\.calibration\.path; held-out"):
        check({"enabled": True, "path": str(calibration_file)})


# --------------------------------------------------------------------------- tables and figures


def record(arm: str, kl: float, agree: float) -> dict:
    return {"arm": arm, "kl_mean": kl, "kl_se": kl / 10, "top1_agreement": agree,
            "ppl_ratio": 1 + kl, "device": {"used": "cpu"}}  # fmt: skip


ARMS = {"base": {"method": "baseline"}, "q4": {"method": "bnb-4bit"}, "gone": {"method": "gptq"}}
QUANT = {"base": {"memory_bytes": {"total": 400.0}}, "q4": {"memory_bytes": {"total": 100.0}}}


def test_the_table_has_every_configured_arm_with_its_memory():
    found = {"base": record("base", 0.0, 1.0), "q4": record("q4", 0.05, 0.9),
             "gone": {"arm": "gone", "status": "failed", "reason": "faithfulness failed: X"}}  # fmt: skip
    table = fa.summary_table(found, QUANT, ARMS, "base").set_index("arm")
    assert list(table.index) == ["base", "q4", "gone"]
    assert table.loc["q4", "kl_mean"] == 0.05 and table.loc["q4", "memory_vs_baseline"] == 0.25
    assert table.loc["q4", "status"] == "ok" and table.loc["q4", "device"] == "cpu"
    assert table.loc["gone", "status"] == "missing: faithfulness failed: X"
    assert math.isnan(table.loc["gone", "kl_mean"]) and math.isnan(
        table.loc["gone", "memory_bytes"]
    )


def test_the_decision_table_gains_kl_columns_only_when_measured(tmp_path):
    """The frozen tiny study's decision table, recomputed with agreement records for two of its
    arms: the same table plus the agreement columns (NaN for arms without one), and the front
    page shows them."""
    from tests import golden

    frozen = pd.read_csv(golden.GOLDEN / "tables" / "decision.csv")
    s = golden.study()
    files = []
    for arm, kl in (("fp32", 0.0), ("nf4_dq", 0.125)):
        path = tmp_path / f"{arm}.json"
        path.write_text(json.dumps(record(arm, kl, 1 - kl)))
        files.append(path)
    from quantstudy import compare
    from quantstudy.study import Analysis

    inputs = golden.inputs()
    out = {k: tmp_path / f"{k}.out" for k in ("decision_html", "summary", "summary_md")}
    out |= {k: tmp_path / f"{k}.csv" for k in golden.TABLES}
    compare.run(
        inputs["samples"], inputs["evals"], inputs["models"], inputs["bench"], s["arms"],
        s["tasks"], s["baseline"], Analysis.parse(s["analysis"]), s["study"], out,
        faithfulness_files=files,
    )  # fmt: skip
    now = pd.read_csv(out["decision"])
    assert list(now.columns) == list(frozen.columns) + ["kl_mean", "kl_se", "top1_agreement",
                                                        "ppl_ratio"]  # fmt: skip
    pd.testing.assert_frame_equal(now[frozen.columns], frozen, check_exact=False, rtol=1e-9)
    kl = now.set_index("arm")["kl_mean"]
    assert kl["nf4_dq"] == 0.125 and kl["fp32"] == 0 and kl.drop(["fp32", "nf4_dq"]).isna().all()
    md = out["summary_md"].read_text()
    assert "| KL (nats) | top-1 agreement |" in md and "0.125 ± 0.013 | 0.875 |" in md


def test_the_figures_are_drawn_from_the_records(tiny_source, text_file, perturbed, tmp_path):
    from quantstudy import plots

    _, _, _ = run(tmp_path, tiny_source, perturbed, text_file)
    arm_json = tmp_path / "arms" / "q4.json"
    arm_json.parent.mkdir()
    rec = json.loads((tmp_path / "arm.json").read_text()) | {"arm": "q4"}
    arm_json.write_text(json.dumps(rec))
    shutil.copy(tmp_path / "arm.tokens.npz", fa.tokens_path(arm_json))
    failed = tmp_path / "arms" / "gone.json"
    failed.write_text(json.dumps({"arm": "gone", "status": "failed", "reason": "x"}))
    table = fa.summary_table(fa.by_arm([arm_json, failed]), QUANT, ARMS, "base")
    names = ("kl_distribution", "kl_vs_memory", "agreement_vs_memory")
    out = {n: tmp_path / "fig" / f"{n}.png" for n in names}
    plots.draw_faithfulness_figures(table, [arm_json, failed], ARMS, out)
    dist = pd.read_csv(out["kl_distribution"].with_suffix(".csv"))
    assert set(dist["arm"]) == {"q4"} and len(dist) == 64
    np.testing.assert_allclose(dist["kl"].mean(), rec["kl_mean"], rtol=1e-6)
    vs = pd.read_csv(out["agreement_vs_memory"].with_suffix(".csv"))
    assert list(vs["arm"]) == ["q4"] and vs["memory_MB"].iloc[0] == 100 / 1e6
    assert all(out[n].exists() and out[n].with_suffix(".svg").exists() for n in names)


# --------------------------------------------------------------------------- the workflow


@pytest.mark.workflow
def test_the_tiny_study_gains_one_reference_and_one_job_per_arm(
    tmp_path, tokenizer_dir, calibration_file
):
    """The plan of the tiny study with faithfulness: the reference once, one job per arm (the
    baseline too), the study-level table, and compare waits for the arms' records."""
    from tests.conftest import job, jobs_in, snakemake, tiny_config, write_config

    config = tiny_config(tokenizer_dir, calibration_file)
    config["faithfulness"] = {"enabled": True, "path": "config/faithfulness/demo.txt",
                              "num_tokens": 64, "context_length": 32, "stride": 16}  # fmt: skip
    write_config(tmp_path, config)
    proc = snakemake(tmp_path, "-n", "-c1")
    plan = jobs_in(proc.stdout + proc.stderr)
    ours = {(r, w) for r, w in plan if r.startswith("faithfulness")}
    assert ours == {
        job("faithfulness_reference", study="tiny"),
        job("faithfulness_report", study="tiny"),
        *(job("faithfulness", study="tiny", arm=arm) for arm in config["arms"]),
    }
    dot = snakemake(tmp_path, "--rulegraph").stdout
    names = dict(re.findall(r'^\s*(\d+)\[label = "(\w+)"', dot, re.M))
    edges = {(names[a], names[b]) for a, b in re.findall(r"^\s*(\d+) -> (\d+)", dot, re.M)}
    assert {("faithfulness", "compare"), ("faithfulness", "faithfulness_report"),
            ("faithfulness_reference", "faithfulness"), ("quantize", "faithfulness")} <= edges  # fmt: skip


@pytest.mark.workflow
def test_too_little_text_fails_the_reference_and_every_arm_says_why(
    tmp_path, tokenizer_dir, calibration_file
):
    """A run whose held-out text is too short: the reference job leaves a failure record naming
    faithfulness.num_tokens, every arm's job records that it could not run, and the table and
    figures are still made, every arm missing with the reason."""
    from tests.conftest import snakemake, tiny_config, write_config

    short = tmp_path / "short.txt"
    short.write_text("Only a few words of text.\n")
    config = tiny_config(tokenizer_dir, calibration_file)
    config["arms"] = {k: config["arms"][k] for k in ("fp32", "nf4_dq")}
    config["faithfulness"] = {"enabled": True, "path": str(short), "num_tokens": 64,
                              "context_length": 32, "stride": 16}  # fmt: skip
    write_config(tmp_path, config)
    snakemake(tmp_path, "-c1", "results/tiny/tables/faithfulness.csv")
    out = tmp_path / "results" / "tiny" / "faithfulness"
    ref = json.loads((out / "reference" / "reference.json").read_text())
    assert ref["status"] == "failed" and "faithfulness.num_tokens" in ref["reason"]
    for arm in ("fp32", "nf4_dq"):
        rec = json.loads((out / "arms" / f"{arm}.json").read_text())
        assert rec["upstream"] and "its baseline's reference job failed" in rec["reason"]
    table = pd.read_csv(tmp_path / "results" / "tiny" / "tables" / "faithfulness.csv")
    assert table["status"].str.contains("faithfulness.num_tokens").all()
    assert (tmp_path / "results" / "tiny" / "figures" / "kl_vs_memory.png").exists()
