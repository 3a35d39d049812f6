"""Agreement with the baseline on held-out text: KL divergence, top-1 agreement, perplexity ratio.

Task scores move by whole items; what quantization does to a model shows in its next-token
distributions first. Every arm reads the same token windows of a held-out text (config section
`faithfulness`) and is compared with the baseline token by token, as llama.cpp's perplexity tool
does with `--kl-divergence`:

- the *reference job* runs the baseline once and caches, per scored token, the baseline's top-k
  log-probabilities and their token ids, the log of the mass outside them, the sum of p·log p
  outside them, its argmax and its log-probability of the actual next token (`reference.npz`,
  with the token windows themselves); full-vocabulary logits are never stored;
- each *arm job* runs the arm over the windows it finds in that cache and computes per token the
  KL divergence KL(baseline ‖ arm) over the baseline's top-k tokens plus one bin for the rest,
  top-1 agreement and its log-probability of the actual next token.

The top-k KL is the KL between the two distributions coarsened to k + 1 bins: a lower bound on
the full KL (data-processing inequality). The gap is p_R · KL(P_R ‖ Q_R), where p_R is the
baseline's mass outside its top-k and P_R, Q_R are the two distributions restricted to those
tokens and renormalised (chain rule). With S = Σ_{j∉top-k} p_j log p_j (cached), p_k the smallest
cached probability (every p_j outside the top-k is ≤ p_k), q_R the arm's mass outside the
baseline's top-k and G the largest value of −Σ_{j∉top-k} p_j log q_j over all p_j ∈ [0, p_k]
summing to p_R (fill p_k onto the tokens the arm finds least likely: the arm job knows q),

    0 ≤ KL(P ‖ Q) − KL_k(P ‖ Q) ≤ U = S + G − p_R (log p_R − log q_R),

which every arm job computes per token (`kl_gap_bound`); with k ≥ the vocabulary, p_R = 0 and
the top-k KL is the full KL. docs/faithfulness.md states it for users.

Windows: the text's tokens are cut into windows of `context_length` tokens starting every
`stride` tokens; each window scores its last `stride` tokens, so every scored token has at least
`context_length − stride` tokens of context and each token is scored once. Windows are the units
of the confidence intervals (tokens within one window are not independent).

Computing an arm's log-probabilities goes through one function, `window_logprobs`, whatever the
format of the arm (the seam where a llama.cpp backend for GGUF arms plugs in).
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .calibration import read_calibration_file, usable_texts
from .config import resolve_path
from .provenance import code_version, package_versions, write_json

if TYPE_CHECKING:
    import pandas as pd

    from .study import Faithfulness

log = logging.getLogger(__name__)

REFERENCE_ARRAYS = (
    "windows", "targets", "window", "topk_ids", "topk_logp", "rest_logp", "tail_plogp",
    "argmax", "target_logp",
)  # fmt: skip
"""What reference.npz holds: windows [W, C] int32 (the token windows), then per scored token
(N = W · stride): targets int32 (the actual next token), window int32, topk_ids int32 [N, k],
topk_logp float32 [N, k] (descending), rest_logp float32 (log of the mass outside the top-k;
-inf when there is none), tail_plogp float32 (Σ p log p outside the top-k), argmax int32,
target_logp float32."""

TOKEN_ARRAYS = ("window", "kl", "agree", "base_target_logp", "arm_target_logp", "kl_gap_bound")
"""What an arm's tokens.npz holds, one value per scored token."""

PERCENTILES = (90, 99, 99.9)


# --------------------------------------------------------------------------- text and windows


def source_name(spec: Faithfulness) -> str:
    """The held-out text's source in words (a file, or dataset/config/split)."""
    if spec.path is not None:
        return spec.path
    return f"{spec.dataset}/{spec.config_name or 'default'}/{spec.split}"


def heldout_text(spec: Faithfulness, root: Path | str = ".") -> str:
    """The held-out text: a local file (one passage per non-empty line, or a .jsonl's
    `text_field`) or a hub dataset split's `text_field`, passages stripped and joined by a blank
    line. Raises ValueError naming the source when it holds no text."""
    if spec.path is not None:
        texts = read_calibration_file(resolve_path(spec.path, None, root), spec.text_field)
    else:
        import datasets

        ds = datasets.load_dataset(spec.dataset, spec.config_name, split=spec.split)
        texts = usable_texts(str(t) for t in ds[spec.text_field])
    if not texts:
        raise ValueError(f"faithfulness: {source_name(spec)!r} holds no text")
    return "\n\n".join(texts)


def tokens_needed(num_tokens: int, context_length: int, stride: int) -> int:
    """Tokens of text that `num_tokens // stride` windows need."""
    return (num_tokens // stride - 1) * stride + context_length


def token_windows(ids: Sequence[int], num_tokens: int, context_length: int, stride: int, where: str = "the text") -> torch.Tensor:  # fmt: skip
    """The windows [W, context_length] over ids, W = num_tokens // stride, starting every
    `stride` tokens (each window scores its last `stride` tokens). Raises ValueError naming the
    config field when the settings or the text cannot give them."""
    if not 1 <= stride < context_length:
        raise ValueError(
            f"faithfulness.stride: {stride} must be at least 1 and below context_length "
            f"{context_length} (a window scores its last `stride` tokens after its first)"
        )
    n_windows = num_tokens // stride
    if n_windows < 1:
        raise ValueError(
            f"faithfulness.num_tokens: {num_tokens} is fewer than one window scores "
            f"(stride {stride})"
        )
    need = tokens_needed(num_tokens, context_length, stride)
    if len(ids) < need:
        raise ValueError(
            f"faithfulness.num_tokens: {n_windows} window(s) of {context_length} tokens, "
            f"{stride} scored each, need {need} tokens of text, but {where} holds only "
            f"{len(ids)}; lower num_tokens or context_length, or give more text"
        )
    ids = torch.as_tensor(list(ids[:need]), dtype=torch.int32)
    return torch.stack([ids[i * stride : i * stride + context_length] for i in range(n_windows)])


# --------------------------------------------------------------------------- the seam


@dataclass
class LogprobBackend:
    """An arm as a source of log-probabilities: `logprobs(windows [b, C]) -> [b, stride, V]`
    float32 log-probabilities of the tokens at positions C − stride … C − 1 of each window (the
    predictions made at positions C − stride − 1 … C − 2), and `record`, what ran (device,
    bitsandbytes CPU path, ...)."""

    logprobs: Callable[[torch.Tensor, int], torch.Tensor]
    record: dict[str, Any]


def _hf_backend(arm_dir: Path, device: str | None) -> LogprobBackend:
    """A saved arm loaded as every stage loads it (weights checked against quantize.json):
    transformers for the baseline, bitsandbytes and compressed-tensors; llama.cpp for a GGUF
    arm (`loading.load_arm` returns its LlamaCppModel, on the CPU, whose forward takes the
    same arguments)."""
    from .device import device_record, resolve_device
    from .loading import bnb_cpu_record, is_gguf_arm, load_arm

    gguf = is_gguf_arm(arm_dir)
    dev = resolve_device("cpu" if gguf else device)
    model = load_arm(arm_dir, dev)

    def logprobs(windows: torch.Tensor, stride: int) -> torch.Tensor:
        ids = windows.to(device=dev, dtype=torch.long)
        with torch.inference_mode():
            try:  # only the positions scored: the lm_head runs on stride + 1 of them
                logits = model(input_ids=ids, use_cache=False, logits_to_keep=stride + 1).logits
            except TypeError:  # a model class without logits_to_keep: all positions, sliced
                logits = model(input_ids=ids, use_cache=False).logits[:, -stride - 1 :]
        return torch.log_softmax(logits[:, :-1].float(), dim=-1)

    record = {"backend": "llama.cpp" if gguf else "transformers",
              "device": device_record(dev) | {"used": str(dev)}}  # fmt: skip
    record["device"] |= bnb_cpu_record(model)
    return LogprobBackend(logprobs, record)


def open_backend(arm_dir: Path | str, device: str | None = None) -> LogprobBackend:
    """The backend that computes an arm's log-probabilities (the loader picks the runtime)."""
    return _hf_backend(Path(arm_dir), device)


def window_logprobs(
    arm_dir: Path | str,
    windows: torch.Tensor,
    stride: int,
    *,
    device: str | None = None,
    batch_size: int = 1,
    record: dict[str, Any] | None = None,
) -> Iterator[torch.Tensor]:
    """THE way an arm's log-probabilities are computed, for the reference and every arm job:
    for consecutive batches of `batch_size` windows [W, C] (token ids), float32 log-probabilities
    [b, stride, V] of each window's last `stride` tokens. Only one batch's full-vocabulary values
    exist at a time. `record` (a dict) receives what the backend says ran."""
    backend = open_backend(arm_dir, device)
    if record is not None:
        record.update(backend.record)
    for start in range(0, len(windows), batch_size):
        yield backend.logprobs(windows[start : start + batch_size], stride)


# --------------------------------------------------------------------------- per token


def _masked(logp: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """logp with the given token ids (last dim) set to -inf."""
    return logp.scatter(-1, ids, -math.inf)


def _plogp(logp: torch.Tensor) -> torch.Tensor:
    """p · log p elementwise, 0 where p = 0."""
    return torch.where(torch.isfinite(logp), logp.exp() * logp, torch.zeros_like(logp))


def reference_stats(logp: torch.Tensor, targets: torch.Tensor, top_k: int) -> dict[str, torch.Tensor]:  # fmt: skip
    """What the reference caches per token from the baseline's log-probabilities logp [..., V]
    and the actual next tokens (see REFERENCE_ARRAYS); k = min(top_k, V)."""
    k = min(top_k, logp.shape[-1])
    topk_logp, topk_ids = logp.topk(k, dim=-1)
    tail = _masked(logp, topk_ids)
    return {
        "topk_ids": topk_ids.int(),
        "topk_logp": topk_logp,
        "rest_logp": torch.logsumexp(tail, dim=-1),  # -inf when no token is left (k = V)
        "tail_plogp": _plogp(tail).sum(-1),
        "argmax": logp.argmax(-1).int(),  # the first maximal index when tied, as for the arm
        "target_logp": logp.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1),
    }


GREEDY_TOKENS = 256
"""Tokens the gap bound's greedy fill looks at one by one; the rest of the mass is bounded by
the last of them (see `_greedy_cross_entropy`)."""


def _greedy_cross_entropy(tail_nlq: torch.Tensor, cap: torch.Tensor, mass: torch.Tensor, n_tail: int) -> torch.Tensor:  # fmt: skip
    """An upper bound on max −Σ p_j log q_j over p_j ∈ [0, cap] with Σ p_j = mass (tail_nlq
    [..., V]: −log q_j, -inf at tokens left out; n_tail tokens are not): the maximum puts `cap`
    on the tokens of largest −log q, the remainder on the next. It is taken exactly over the
    GREEDY_TOKENS largest values; mass still left after them goes at the smallest of those
    values, which no later token exceeds (so the bound stays valid and costs one top-k)."""
    m = min(GREEDY_TOKENS, n_tail)
    if m <= 0 or not mass.numel():
        return torch.zeros_like(mass)
    largest = tail_nlq.topk(m, dim=-1).values  # descending
    steps = torch.arange(m, dtype=mass.dtype, device=mass.device)
    weights = (mass.unsqueeze(-1) - steps * cap.unsqueeze(-1)).clamp(min=0)
    weights = torch.minimum(weights, cap.unsqueeze(-1))
    terms = torch.where(weights > 0, weights * largest, torch.zeros_like(largest))
    left = (mass - weights.sum(-1)).clamp(min=0)
    last = torch.where(left > 0, left * largest[..., -1], torch.zeros_like(left))
    return terms.sum(-1) + last


def arm_stats(logq: torch.Tensor, ref: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per token, the arm (log-probabilities logq [..., V]) against the reference's cache for the
    same tokens: top-k KL(baseline ‖ arm) with the remaining-mass bin, its gap bound, top-1
    agreement and both log-probabilities of the actual next token."""
    ids = ref["topk_ids"].long()
    if ids.shape[-1] > logq.shape[-1] or int(ids.max()) >= logq.shape[-1]:
        raise ValueError(
            f"the arm's vocabulary ({logq.shape[-1]} tokens) does not hold the baseline's "
            "tokens: arms of one comparison must share the tokenizer"
        )
    logp_k = ref["topk_logp"]
    logq_k = logq.gather(-1, ids)
    p_k = logp_k.exp()
    kl_top = torch.where(p_k > 0, p_k * (logp_k - logq_k), torch.zeros_like(p_k)).sum(-1)
    tail_q = _masked(logq, ids)
    rest_q = torch.logsumexp(tail_q, dim=-1)
    rest_p = ref["rest_logp"]
    p_rest = rest_p.exp()
    has_rest = p_rest > 0
    kl_rest = torch.where(has_rest, p_rest * (rest_p - rest_q), torch.zeros_like(p_rest))
    kl = (kl_top + kl_rest).clamp_min(0.0)  # ≥ 0 exactly; rounding may leave -1e-9
    tail_nlq = _masked(-logq, ids)  # −log q outside the baseline's top-k; -inf inside
    rest_mass = torch.where(has_rest, p_rest, 0.0)
    cross = _greedy_cross_entropy(tail_nlq, p_k[..., -1], rest_mass, logq.shape[-1] - ids.shape[-1])
    bound = torch.where(has_rest, ref["tail_plogp"] + cross - kl_rest, torch.zeros_like(kl))
    targets = ref["targets"].long().unsqueeze(-1)
    return {
        "kl": kl,
        "agree": logq.argmax(-1).int() == ref["argmax"],
        "base_target_logp": ref["target_logp"],
        "arm_target_logp": logq.gather(-1, targets).squeeze(-1),
        "kl_gap_bound": bound.clamp_min(0.0),
    }


def full_kl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(P ‖ Q) over the whole vocabulary, per token (for tests and checks)."""
    p = logp.exp()
    return torch.where(p > 0, p * (logp - logq), torch.zeros_like(p)).sum(-1)


# --------------------------------------------------------------------------- the jobs


def _sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def build_reference(
    baseline_dir: Path | str,
    spec: Faithfulness,
    out_npz: Path | str,
    out_json: Path | str,
    root: Path | str = ".",
    device: str | None = None,
) -> dict[str, Any]:
    """The reference job: tokenize the held-out text with the baseline's tokenizer, cut the
    windows, run the baseline once and cache its top-k per scored token (reference.npz), with a
    record of what was done (reference.json)."""
    from transformers import AutoTokenizer

    start = time.perf_counter()
    text = heldout_text(spec, root)
    tokenizer = AutoTokenizer.from_pretrained(baseline_dir)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    where = f"{source_name(spec)!r} ({len(text)} characters)"
    windows = token_windows(ids, spec.num_tokens, spec.context_length, spec.stride, where)
    stride = spec.stride
    parts: dict[str, list[torch.Tensor]] = {}
    record: dict[str, Any] = {}
    batches = window_logprobs(
        baseline_dir, windows, stride, device=device, batch_size=spec.batch_size, record=record
    )
    done = 0
    for logp in batches:
        b = logp.shape[0]
        targets = windows[done : done + b, -stride:]
        stats = reference_stats(logp, targets.to(logp.device), spec.top_k)
        stats["targets"] = targets
        stats["window"] = torch.arange(done, done + b, dtype=torch.int32)[:, None].expand(b, stride)
        for key, value in stats.items():
            parts.setdefault(key, []).append(value.reshape(b * stride, *value.shape[2:]).cpu())
        done += b
    arrays = {k: torch.cat(v).numpy() for k, v in parts.items()}
    arrays["windows"] = windows.numpy()
    np.savez(out_npz, **{k: arrays[k] for k in REFERENCE_ARRAYS})
    summary = {
        "baseline_dir": str(baseline_dir),
        "settings": spec.model_dump(),
        "source": source_name(spec),
        "text_characters": len(text),
        "text_sha256": hashlib.sha256(text.encode()).hexdigest(),
        "text_tokens": len(ids),
        "windows": int(windows.shape[0]),
        "scored_tokens": int(arrays["targets"].size),
        "top_k": int(arrays["topk_ids"].shape[1]),
        "vocab_size": int(logp.shape[-1]),
        "windows_sha256": _sha256(arrays["windows"]),
        "baseline_ppl": float(np.exp(-arrays["target_logp"].astype(np.float64).mean())),
        "rest_mass_mean": float(np.exp(arrays["rest_logp"].astype(np.float64)).mean()),
        "seconds": time.perf_counter() - start,
        **record,
        "packages": package_versions(),
        "code_version": code_version(),
    }
    write_json(out_json, summary)
    log.info("reference: %d windows, %d scored tokens, top-%d", summary["windows"],
             summary["scored_tokens"], summary["top_k"])  # fmt: skip
    return summary


def load_reference(npz: Path | str) -> dict[str, np.ndarray]:
    """The reference cache's arrays (REFERENCE_ARRAYS)."""
    with np.load(npz) as f:
        return {k: f[k] for k in REFERENCE_ARRAYS}


def compare_arm(
    arm_dir: Path | str,
    arm: str,
    reference_npz: Path | str,
    reference_json: Path | str,
    batch_size: int,
    alpha: float,
    out_json: Path | str,
    out_tokens: Path | str,
    device: str | None = None,
) -> dict[str, Any]:
    """The arm job: the arm over the reference's windows, per token against the cache
    (tokens.npz), and its summary (see `summarize`) with the record of the run (JSON)."""
    import json

    start = time.perf_counter()
    ref = load_reference(reference_npz)
    ref_record = json.loads(Path(reference_json).read_text())
    windows = torch.from_numpy(ref["windows"])
    stride = int(ref["targets"].size // len(windows))
    record: dict[str, Any] = {}
    parts: dict[str, list[np.ndarray]] = {}
    done = 0
    batches = window_logprobs(
        arm_dir, windows, stride, device=device, batch_size=batch_size, record=record
    )
    for logq in batches:
        n = logq.shape[0] * stride
        rows = slice(done, done + n)
        batch = {
            k: torch.from_numpy(ref[k][rows]).reshape(logq.shape[0], stride, *ref[k].shape[1:])
            for k in ("topk_ids", "topk_logp", "rest_logp", "tail_plogp", "argmax",
                      "target_logp", "targets")
        }  # fmt: skip
        batch = {k: v.to(logq.device) for k, v in batch.items()}
        stats = arm_stats(logq, batch)
        for key, value in stats.items():
            parts.setdefault(key, []).append(value.reshape(n).cpu().numpy())
        done += n
    tokens = {k: np.concatenate(v) for k, v in parts.items()}
    tokens["window"] = ref["window"]
    np.savez(out_tokens, **{k: tokens[k] for k in TOKEN_ARRAYS})
    summary = {
        "arm": arm,
        **summarize(tokens, alpha),
        "rest_mass_mean": ref_record["rest_mass_mean"],
        "top_k": ref_record["top_k"],
        "reference": {k: ref_record[k] for k in ("source", "text_sha256", "windows_sha256",
                                                 "windows", "scored_tokens", "settings")},
        "batch_size": batch_size,
        "seconds": time.perf_counter() - start,
        **record,
        "packages": package_versions(),
        "code_version": code_version(),
    }  # fmt: skip
    write_json(out_json, summary)
    return summary


# --------------------------------------------------------------------------- the summary


def _window_means(values: np.ndarray, window: np.ndarray) -> np.ndarray:
    """The mean of values per window, windows in order."""
    _, inverse, counts = np.unique(window, return_inverse=True, return_counts=True)
    return np.bincount(inverse, weights=values.astype(np.float64)) / counts


def window_ci(values: np.ndarray, window: np.ndarray, alpha: float, floor: float = 0.0) -> tuple[float, float, float, float]:  # fmt: skip
    """(mean, standard error, CI low, CI high) of the mean of per-token values, windows as the
    units (every window holds the same number of tokens): Student's t over the window means, at
    least ±floor wide. NaN SE and CI with one window: it has no spread to judge from."""
    from scipy import stats as sps

    means = _window_means(values, window)
    mean = float(means.mean())
    if len(means) < 2:
        return mean, math.nan, math.nan, math.nan
    se = float(means.std(ddof=1) / math.sqrt(len(means)))
    half = max(float(sps.t.ppf(1 - alpha / 2, len(means) - 1)) * se, floor)
    return mean, se, mean - half, mean + half


def summarize(tokens: Mapping[str, np.ndarray], alpha: float) -> dict[str, Any]:
    """An arm's agreement with the baseline from its per-token values (TOKEN_ARRAYS), paired over
    windows: mean KL with its SE, KL percentiles, top-1 agreement with a CI (1 − alpha; never
    narrower than what n unchanged tokens can rule out when all agree, docs/statistics.md), perplexity
    of each and their ratio with a CI, mean and RMS change in the correct token's probability."""
    from .stats import zero_change_bound

    window = tokens["window"]
    n_windows = int(len(np.unique(window)))
    kl = tokens["kl"].astype(np.float64)
    kl_mean, kl_se, _, _ = window_ci(kl, window, alpha)
    agree = tokens["agree"].astype(np.float64)
    # every token agrees (or none does): at least the zero-change floor of n items, as the
    # clustered intervals of docs/statistics.md have it
    all_agree_floor = zero_change_bound(kl.size, alpha / 2) if agree.min() == agree.max() else 0.0
    agree_mean, _, agree_low, agree_high = window_ci(agree, window, alpha, all_agree_floor)
    base, arm = tokens["base_target_logp"].astype(np.float64), tokens["arm_target_logp"].astype(np.float64)  # fmt: skip
    nll_diff = base - arm  # log(ppl_arm / ppl_base) per token, averaged
    diff_mean, _, diff_low, diff_high = window_ci(nll_diff, window, alpha)
    dp = np.exp(arm) - np.exp(base)
    dp_mean, dp_se, dp_low, dp_high = window_ci(dp, window, alpha)
    out = {
        "n_tokens": int(kl.size),
        "n_windows": n_windows,
        "alpha": alpha,
        "kl_mean": kl_mean,
        "kl_se": kl_se,
        **{f"kl_p{p:g}": float(np.percentile(kl, p)) for p in PERCENTILES},
        "kl_max": float(kl.max()),
        "kl_gap_bound_mean": float(tokens["kl_gap_bound"].astype(np.float64).mean()),
        "top1_agreement": agree_mean,
        "top1_agreement_ci_low": max(0.0, agree_low) if not math.isnan(agree_low) else math.nan,
        "top1_agreement_ci_high": min(1.0, agree_high) if not math.isnan(agree_high) else math.nan,
        "ppl_baseline": float(np.exp(-base.mean())),
        "ppl_arm": float(np.exp(-arm.mean())),
        "ppl_ratio": float(np.exp(diff_mean)),
        "ppl_ratio_ci_low": float(np.exp(diff_low)),
        "ppl_ratio_ci_high": float(np.exp(diff_high)),
        "dp_mean": dp_mean,
        "dp_se": dp_se,
        "dp_ci_low": dp_low,
        "dp_ci_high": dp_high,
        "dp_rms": float(np.sqrt(np.mean(dp**2))),
    }
    if n_windows < 2:
        out["note"] = "one window: no standard error or confidence interval (give more tokens)"
    return out


# --------------------------------------------------------------------------- the study's table

TABLE_COLUMNS = [
    "arm", "method", "status", "memory_bytes", "memory_vs_baseline", "n_windows", "n_tokens",
    "kl_mean", "kl_se", "kl_p90", "kl_p99", "kl_p99.9", "kl_max", "kl_gap_bound_mean",
    "rest_mass_mean", "top1_agreement", "top1_agreement_ci_low", "top1_agreement_ci_high",
    "ppl_baseline", "ppl_arm", "ppl_ratio", "ppl_ratio_ci_low", "ppl_ratio_ci_high", "dp_mean",
    "dp_ci_low", "dp_ci_high", "dp_rms", "top_k", "device",
]  # fmt: skip
"""Columns of tables/faithfulness.csv, one row per configured arm."""


def tokens_path(arm_json: Path | str) -> Path:
    """Where an arm's per-token values lie beside its faithfulness record."""
    arm_json = Path(arm_json)
    return arm_json.with_name(arm_json.name.removesuffix(".json") + ".tokens.npz")


def by_arm(arm_jsons: Sequence[Path | str]) -> dict[str, dict[str, Any]]:
    """The faithfulness records (successes and failure records) by arm."""
    from . import records

    return {r["arm"]: r for r in map(records.read, arm_jsons)}


def summary_table(
    found: Mapping[str, Mapping[str, Any]],
    quant: Mapping[str, Mapping[str, Any]],
    arms: Mapping[str, Mapping[str, Any]],
    baseline: str,
) -> pd.DataFrame:
    """One row per configured arm: its agreement with the baseline and its bytes in memory (from
    quantize.json, as the decision table has them); NaN where the arm has no record."""
    import pandas as pd

    from .records import is_failure

    base = quant.get(baseline)
    base_mem = float(base["memory_bytes"]["total"]) if base else math.nan
    rows = []
    for arm, spec in arms.items():
        rec, q = found.get(arm), quant.get(arm)
        memory = float(q["memory_bytes"]["total"]) if q else math.nan
        row: dict[str, Any] = {
            "arm": arm,
            "method": spec["method"],
            "memory_bytes": memory,
            "memory_vs_baseline": memory / base_mem if base_mem else math.nan,
        }
        if rec is None:
            row["status"] = "missing: not measured"
        elif is_failure(rec):
            row["status"] = f"missing: {rec['reason']}"
        else:
            row |= {k: rec.get(k, math.nan) for k in TABLE_COLUMNS if k in rec}
            row["status"] = "ok"
            row["device"] = ((rec.get("device") or {}).get("used")) or None
        rows.append(row)
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def write_report_table(
    arm_jsons: Sequence[Path | str],
    model_dirs: Sequence[Path | str],
    arms: Mapping[str, Mapping[str, Any]],
    baseline: str,
    out_csv: Path | str,
    out_html: Path | str,
    study: str,
) -> pd.DataFrame:
    """tables/faithfulness.csv and its report page from every arm's record."""
    from .aggregate import load_quantize_records
    from .report import html_page, html_table

    table = summary_table(by_arm(arm_jsons), load_quantize_records(model_dirs), arms, baseline)
    table.to_csv(out_csv, index=False)
    caption = (
        f"Every arm against the baseline {baseline!r} on the same token windows of held-out "
        "text. kl_*: KL(baseline ‖ arm) per token in nats over the baseline's top_k tokens plus "
        "one bin for the rest (a lower bound on the full KL; kl_gap_bound_mean bounds the "
        "difference, rest_mass_mean is the baseline's mass outside its top-k); mean with its "
        "standard error over windows and percentiles over tokens. top1_agreement: how often the "
        "arm's most likely token is the baseline's. ppl_*: perplexity of the actual next tokens "
        "and the ratio arm / baseline; dp_*: change in the probability of the actual next token "
        "(arm − baseline), mean and RMS. Intervals are 1 − alpha, Student's t over windows "
        "(paired: both models saw every window). See docs/faithfulness.md."
    )
    Path(out_html).write_text(
        html_page(
            f"Study {study}: agreement with the baseline", [("Per arm", caption, html_table(table))]
        )  # fmt: skip
    )
    return table
