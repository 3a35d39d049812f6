"""What the report says in words and tables: the generated summary, table pages, provenance.

Snakemake's report shows images and HTML pages inline but offers CSV files only as downloads,
so every table a reader should see is also written as a small standalone HTML page here.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from . import records
from .benchmark.record import read_many as read_benchmarks
from .memory import fmt_bytes
from .provenance import code_label, code_version, code_versions, mixed_code_warning

if TYPE_CHECKING:
    from .study import Analysis

VERDICT_PREFIX = "verdict:"
"""Decision-table columns holding an arm's verdict on one task are named `verdict:<task>`."""

PROVENANCE_COLUMNS = ["section", "arm", "item", "value"]


# --------------------------------------------------------------------------- formatting


def fmt_ratio(x: float) -> str:
    """A ratio as "0.27×" ("–" when unknown)."""
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}×"


def _verdict_tasks(decision: pd.DataFrame) -> list[str]:
    """The task names of the decision table's verdict columns, in order."""
    return [c[len(VERDICT_PREFIX) :] for c in decision.columns if c.startswith(VERDICT_PREFIX)]


def _short_loss(row: Mapping[str, Any]) -> str:
    """The worst significant loss in a few words."""
    diff = row.get("worst_loss_diff")
    if diff is None or (isinstance(diff, float) and math.isnan(diff)):
        return "none" if str(row.get("status", "ok")) == "ok" else "–"
    return f"{diff:+.3f} ({row['worst_loss_task']} {row['worst_loss_metric']})"


def _caveat(row: Mapping[str, Any]) -> str:
    """A decision row's caveat, "" when it has none (read back from CSV, an empty one is NaN)."""
    caveat = row.get("caveat")
    return caveat if isinstance(caveat, str) else ""


def decision_display(decision: pd.DataFrame) -> pd.DataFrame:
    """The decision table as a reader sees it: one row per arm, words and formatted numbers."""
    tasks = _verdict_tasks(decision)
    rows = []
    for r in decision.to_dict("records"):
        note = "recommended" if r["recommended"] else ""
        if r["role"] == "baseline":
            note = "baseline"
        if str(r["status"]) != "ok":
            note = (note + "; " if note else "") + str(r["status"])
        if _caveat(r):
            note = (note + "; " if note else "") + _caveat(r)
        rows.append(
            {
                "arm": r["arm"],
                "method": r["method"],
                "memory (× baseline)": (
                    f"{fmt_bytes(r['memory_bytes'])} ({fmt_ratio(r['memory_vs_baseline'])})"
                    if not _isnan(r["memory_bytes"])
                    else "missing"
                ),
                "decode speed (× baseline)": fmt_ratio(r["speed_vs_baseline"]),
                **_agreement_cells(r),
                **{t: r[f"{VERDICT_PREFIX}{t}"] for t in tasks},
                "worst significant loss": _short_loss(r),
                "note": note,
            }
        )
    return pd.DataFrame(rows)


def _agreement_cells(row: Mapping[str, Any]) -> dict[str, str]:
    """The decision row's agreement with the baseline (issue 17) in words: mean KL ± its SE and
    top-1 agreement; nothing when the study did not measure it."""
    if "kl_mean" not in row:
        return {}
    kl, se, agree = row["kl_mean"], row["kl_se"], row["top1_agreement"]
    text = "–" if _isnan(kl) else f"{kl:.4g}" + ("" if _isnan(se) else f" ± {se:.2g}")
    return {"KL (nats)": text, "top-1 agreement": "–" if _isnan(agree) else f"{agree:.3f}"}


def _isnan(x: Any) -> bool:
    """Whether x is None or a float NaN."""
    return x is None or (isinstance(x, float) and math.isnan(x))


# --------------------------------------------------------------------------- the summary


def _power_text(r: Mapping[str, Any]) -> str:
    """One task-metric's minimum detectable difference in words."""
    head = f"{r['task']} {r['metric']} ({r['n']} items): "
    if r["mdd_max"] == 0:
        return head + "no arm changed any item's score (no variance to size a test from)"
    spread = r["mdd_max"] - r["mdd_min"] > 5e-4
    return (
        head
        + f"{r['mdd_max']:.3f}"
        + (f" (arms range {r['mdd_min']:.3f}–{r['mdd_max']:.3f})" if spread else "")
    )


def summary_sentences(
    decision: pd.DataFrame,
    recommendation: Any,
    power: pd.DataFrame,
    analysis: Analysis,
    baseline: str,
) -> list[str]:
    """The generated summary: the recommendation, what was compared, power, what is missing."""
    tasks = _verdict_tasks(decision)
    candidates = decision[decision["role"] != "baseline"]
    rule = recommendation.rule
    out = []
    if recommendation.arm:
        reason = recommendation.reason.removeprefix(f"{recommendation.arm}: ")
        out.append(f"**Recommended: {recommendation.arm}** (rule *{rule}*): {reason}.")
    else:
        # the per-arm reasons are the verdicts of the decision table: keep the headline short
        reason = recommendation.reason.split(" (", 1)[0]
        out.append(f"**No arm is recommended** (rule *{rule}*): {reason}; see the verdicts below.")
    conditions = getattr(recommendation, "conditions", ())
    if conditions:  # task families (analysis.families): the arm per workload, with its finding
        head = f"*{recommendation.arm}* by default" if recommendation.arm else "no arm by default"
        out[0] += (
            f" **By workload:** {head}; "
            + "; ".join(
                f"*{c.arm}* only where no {c.family} task ({c.finding})" for c in conditions
            )
            + "."
        )
    margin = analysis.margin
    alpha = analysis.alpha
    counts = {
        v: sum((candidates[f"{VERDICT_PREFIX}{t}"] == v).sum() for t in tasks)
        for v in ("equivalent", "better", "worse", "inconclusive", "missing")
    }
    out.append(
        f"{len(candidates)} arm(s) were set against the baseline *{baseline}* on "
        f"{len(tasks)} task(s), item by item. Of the {len(candidates) * len(tasks)} arm-task "
        f"verdicts, {counts['equivalent']} are equivalent (the {100 * (1 - 2 * alpha):g}% "
        f"interval of the difference inside ±{margin:g}), {counts['better']} better and "
        f"{counts['worse']} worse (Holm-adjusted p < {alpha:g} and a CI that excludes 0), "
        f"{counts['inconclusive']} inconclusive and {counts['missing']} missing."
    )
    if not power.empty:
        parts = [_power_text(r) for r in power.to_dict("records")]
        worst = float(power["mdd_max"].max())
        note = (
            f" Where this exceeds the margin (±{margin:g}), equivalence needs more items than "
            'the study has, and "inconclusive" is the expected verdict for a small true loss.'
            if worst > margin
            else ""
        )
        if (power["mdd_min"] == 0).any():  # an arm that changed no item of a task
            note += (
                " Items that all agree still leave a difference of up to about 3/n unseen, so "
                f"they show equivalence only from about {3 / margin:.0f} items."
            )
        out.append(
            "Power: the smallest difference the paired test detects with 80 % power is, at "
            "most, " + "; ".join(parts) + "." + note
        )
    gone = decision[decision["status"] != "ok"]
    if not gone.empty:
        out.append(
            "Not complete: "
            + "; ".join(f"{r['arm']} — {r['status']}" for r in gone.to_dict("records"))
            + ". These arms stay in the table; a rule never picks an arm with a missing verdict."
        )
    caveats = [f"{r['arm']} — {_caveat(r)}" for r in decision.to_dict("records") if _caveat(r)]
    if caveats:
        out.append(
            "Batch sizes differ: " + "; ".join(caveats) + ". Padding moves lm-eval's scores a "
            "little, so these verdicts mix that in; rerun with a batch size every arm fits."
        )
    runtime = runtime_sentence(decision)
    if runtime:
        out.append(runtime)
    measured = decision[decision["speed_vs_baseline"].notna()]
    if len(measured):
        out.append(f"Decode speed: {measured['speed_measure'].iloc[0]}.")
    else:
        out.append("Decode speed: not measured (no benchmark results).")
    return out


def runtime_sentence(decision: pd.DataFrame) -> str | None:
    """Which arms llama.cpp ran (method gguf), and whether the study can tell its runtime apart
    from its quantization: an unquantized GGUF arm (16 or 32 bits) is the baseline's weights in
    llama.cpp, so its verdicts are the runtime's alone. None without GGUF arms."""
    if "method" not in decision.columns:
        return None
    gguf = decision[decision["method"] == "gguf"]
    if gguf.empty:
        return None
    plain = gguf[gguf["bits"].astype(float) >= 16]
    quantized = [a for a in gguf["arm"] if a not in set(plain["arm"])]
    text = (
        f"Runtime: {', '.join(gguf['arm'])} ran in llama.cpp (GGUF files), every other arm in "
        "transformers; a GGUF arm's difference from the baseline is llama.cpp's runtime and its "
        "quantization together."
    )
    if plain.empty:
        return text + (" No unquantized GGUF arm was run, so the two are not separated (add one "
                       "with quant_type F16, BF16 or F32).")  # fmt: skip
    tasks = _verdict_tasks(decision)
    for r in plain.to_dict("records"):
        verdicts = ", ".join(f"{t}: {r[VERDICT_PREFIX + t]}" for t in tasks)
        text += (f" {r['arm']} is the source's weights unquantized in llama.cpp: its verdicts "
                 f"({verdicts}) are the runtime's alone.")  # fmt: skip
    if quantized:
        text += (f" So {', '.join(quantized)} differ from {', '.join(plain['arm'])} by "
                 "quantization alone; their comparisons with the baseline include both.")  # fmt: skip
    return text


_FRONT_CSS = (
    "table.decision { font-size: 0.8rem; margin: 0.5em 0 1em; } "
    "table.decision th, table.decision td { padding: 2px 6px; } "
    "table.decision tr.recommended td { font-weight: bold; background: #ecfdf5; } "
    "table.decision td.equivalent { background: #dcfce7; } "
    "table.decision td.better { background: #bbf7d0; } "
    "table.decision td.worse { background: #fee2e2; } "
    "table.decision td.inconclusive { background: #fef9c3; } "
    "table.decision td.missing { background: #e2e8f0; color: #64748b; }"
)


def summary_rst(
    decision: pd.DataFrame,
    recommendation: Any,
    power: pd.DataFrame,
    analysis: Analysis,
    baseline: str,
) -> str:
    """The report's front page body in RST: the recommendation, the decision table (raw HTML,
    verdicts coloured, the recommended arm in bold), then the rest of the summary."""
    display = decision_display(decision)
    classes = ["recommended" if r else "" for r in decision["recommended"]]
    table = html_table(display, row_classes=classes).replace("<table>", '<table class="decision">')
    paras = summary_sentences(decision, recommendation, power, analysis, baseline)
    raw = f"<style>{_FRONT_CSS}</style><p><em>Decision table: every configured arm</em></p>{table}"
    return (
        paras[0]
        + "\n\n.. raw:: html\n\n   "
        + raw.replace("\n", " ")
        + "\n\n"
        + "\n\n".join(paras[1:])
        + "\n"
    )


def summary_markdown(
    decision: pd.DataFrame,
    recommendation: Any,
    power: pd.DataFrame,
    analysis: Analysis,
    baseline: str,
    study: str,
) -> str:
    """The same summary and decision table in markdown (for a README or a pull request)."""
    display = decision_display(decision)
    head = "| " + " | ".join(display.columns) + " |"
    sep = "|" + "|".join("---" for _ in display.columns) + "|"
    body = [
        "| " + " | ".join("–" if _isnan(v) else str(v) for v in row) + " |"
        for row in display.itertuples(index=False)
    ]
    paras = summary_sentences(decision, recommendation, power, analysis, baseline)
    return (
        f"# Study `{study}`: decision\n\n"
        + paras[0]
        + "\n\n"
        + "\n".join([head, sep, *body])
        + "\n\n"
        + "\n\n".join(paras[1:])
        + "\n"
    )


# --------------------------------------------------------------------------- HTML pages

_CSS = """
body { font-family: system-ui, sans-serif; font-size: 14px; margin: 1em; color: #1e293b; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #cbd5e1; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f1f5f9; }
tr.recommended td { font-weight: bold; background: #ecfdf5; }
td.equivalent { background: #dcfce7; } td.better { background: #bbf7d0; }
td.worse { background: #fee2e2; } td.inconclusive { background: #fef9c3; }
td.missing { background: #e2e8f0; color: #64748b; }
p.caption { max-width: 60em; }
code { font-size: 12px; }
"""

_VERDICT_CLASSES = {"equivalent", "better", "worse", "inconclusive", "missing"}


def _html_cell(value: Any, floatfmt: str) -> str:
    """One <td>, classed by verdict where the value is one."""
    if _isnan(value):
        return "<td>–</td>"
    if isinstance(value, float):
        text = format(value, floatfmt)
    else:
        text = str(value)
    cls = f' class="{text}"' if text in _VERDICT_CLASSES else ""
    return f"<td{cls}>{html.escape(text)}</td>"


def html_table(
    df: pd.DataFrame, floatfmt: str = ".4g", row_classes: Sequence[str] | None = None
) -> str:
    """An HTML <table> of the frame, verdict cells coloured."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    rows = []
    for i, row in enumerate(df.itertuples(index=False)):
        cls = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        rows.append(f"<tr{cls}>" + "".join(_html_cell(v, floatfmt) for v in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def html_page(title: str, sections: Sequence[tuple[str, str, str]]) -> str:
    """A standalone HTML page: a title, then (heading, caption, table html) sections."""
    body = [f"<h1>{html.escape(title)}</h1>"]
    for heading, caption, table in sections:
        body.append(f"<h2>{html.escape(heading)}</h2>")
        if caption:
            body.append(f'<p class="caption">{html.escape(caption)}</p>')
        body.append(table)
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>"
        f"<body>{''.join(body)}</body></html>\n"
    )


def decision_html(
    decision: pd.DataFrame,
    comparisons: pd.DataFrame,
    scores: pd.DataFrame,
    summary: Sequence[str],
    study: str,
) -> str:
    """The decision page: summary, decision table, then every comparison and score behind it."""
    display = decision_display(decision)
    classes = ["recommended" if r else "" for r in decision["recommended"]]
    plain = [s.replace("**", "").replace("*", "") for s in summary]
    return html_page(
        f"Study {study}: decision",
        [
            ("Summary", " ".join(plain), html_table(display, row_classes=classes)),
            (
                "Comparisons with the baseline",
                "One row per arm, task and metric: paired difference (arm − baseline) with its "
                "CI (diff_ci_method: Tango's score interval for 0/1 scores, a bootstrap "
                "otherwise, resampling whole subjects where the task has them), the test of no "
                "difference and its Holm-adjusted p (subject-level for tasks with subjects), "
                "the equivalence interval (eq_low, eq_high at level 1 − 2α, eq_method) and its "
                "TOST p against the margin, the verdict, and the minimum detectable difference "
                "(mdd) at 80% power. No interval collapses when no item changed: bootstrap and "
                "t intervals are at least ±R·(1 − α^(1/n)) wide, the most n unchanged items "
                "can rule out. An extraction task's micro_f1, precision and recall pool true/"
                "false positives and false negatives over sentences: their intervals resample "
                "sentences and pool again, their test swaps the arms' answers sentence by "
                "sentence (docs/statistics.md).",
                html_table(comparisons),
            ),
            (
                "Scores",
                "One row per arm, task and metric: mean score with its 95% CI.",
                html_table(scores),
            ),
        ],
    )


def write_decision_pages(
    out: Mapping[str, Path | str],
    decision: pd.DataFrame,
    comparisons: pd.DataFrame,
    scores: pd.DataFrame,
    recommendation: Any,
    power: pd.DataFrame,
    analysis: Analysis,
    baseline: str,
    study: str,
    warning: str | None = None,
) -> None:
    """The decision's pages: out["decision_html"], the report's front page out["summary"] (RST)
    and out["summary_md"]; ``warning`` (e.g. mixed code versions) heads the HTML summary."""
    summary = summary_sentences(decision, recommendation, power, analysis, baseline)
    Path(out["decision_html"]).write_text(
        decision_html(
            decision, comparisons, scores, ([warning] if warning else []) + summary, study
        )
    )
    Path(out["summary"]).write_text(
        summary_rst(decision, recommendation, power, analysis, baseline)
    )
    Path(out["summary_md"]).write_text(
        summary_markdown(decision, recommendation, power, analysis, baseline, study)
    )


# --------------------------------------------------------------------------- provenance


def study_outputs(
    source: Mapping[str, Any] | None,
    download: Mapping[str, Any] | None,
    quant: Mapping[str, Mapping[str, Any]],
    evals: Iterable[Mapping[str, Any]],
    benches: Iterable[Mapping[str, Any]],
) -> dict[str, Mapping[str, Any]]:
    """The jobs' JSON records by their path under results/<study>/ (those that exist)."""
    out: dict[str, Mapping[str, Any]] = {}
    if download:
        out["download/download.json"] = download
    if source:
        out["source/source.json"] = source
    out |= {f"models/{arm}/quantize.json": rec for arm, rec in quant.items()}
    out |= {f"eval/{ev['arm']}/{ev['task']}.json": ev for ev in evals}
    out |= {f"bench/{b['arm']}.json": b for b in benches}
    return out


def code_rows(
    outputs: Mapping[str, Mapping[str, Any]], made_by: Mapping[str, Any] | None
) -> list[tuple[str, str]]:
    """(item, value) rows of the provenance's code section: a warning when the outputs came from
    more than one code version, each version with the outputs it made, and the code that made
    the tables and this page (`made_by`)."""
    versions = code_versions(outputs)
    rows = []
    if warning := mixed_code_warning(versions):
        rows.append(("warning", warning))
    for label, names in versions.items():
        made = ", ".join(names) if len(versions) > 1 else f"every output ({len(names)})"
        rows.append((f"outputs made by {label}", made))
    rows.append(("tables and report made by", code_label(made_by)))
    return rows


def provenance_rows(
    source: Mapping[str, Any] | None,
    download: Mapping[str, Any] | None,
    quant: Mapping[str, Mapping[str, Any]],
    evals: Iterable[Mapping[str, Any]],
    benches: Iterable[Mapping[str, Any]],
    config: Mapping[str, Any],
    made_by: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """What was measured: model source and revision, weight hashes, versions, devices, the
    quant-study code each output was made by (flagging a mixture), config.

    One row per fact, with columns section, arm (empty for study-wide facts), item, value.
    ``made_by`` is the code version of the job making the table (`provenance.code_version`).
    """
    rows: list[dict[str, Any]] = []
    evals, benches = list(evals), list(benches)

    def add(section: str, arm: str, item: str, value: Any) -> None:
        if isinstance(value, dict | list):
            value = json.dumps(value, sort_keys=True)
        rows.append({"section": section, "arm": arm, "item": item, "value": value})

    if download:
        for key, value in sorted(download.items()):
            add("model", "", f"download.{key}", value)
    if source:
        for key, value in sorted((source.get("source") or {}).items()):
            add("model", "", f"source.{key}", value)
        package = (source.get("source") or {}).get("python_package")
        if package:
            add("model", "", f"{package} version (installed when the report was made)",
                _installed_version(package))  # fmt: skip
        add("model", "", "parameters", source.get("parameters"))
        for name, digest in sorted((source.get("sha256") or {}).items()):
            add("model", "", f"sha256 {name}", digest)
    else:
        add("model", "", "source", "missing: no source.json")
    for arm in config["arms"]:
        rec = quant.get(arm)
        if rec is None:
            add("weights", arm, "status", "missing: not built")
            continue
        add("weights", arm, "method", rec.get("method"))
        add("weights", arm, "parameters", rec.get("parameters"))
        for name, digest in sorted((rec.get("sha256") or {}).items()):
            add("weights", arm, f"sha256 {name}", digest)
        add("weights", arm, "quantized on", _device_text(rec.get("device")))
        if rec.get("method") == "gguf":
            verified = rec.get("verified") or {}
            versions_ = rec.get("versions") or {}
            add("weights", arm, "runtime",
                f"llama.cpp (llama-cpp-python {versions_.get('llama_cpp_python')})")  # fmt: skip
            add("weights", arm, "llama.cpp build", versions_.get("llama_cpp_system_info"))
            add("weights", arm, "file type", verified.get("file_type"))
            add("weights", arm, "tensor types (weight matrices)", verified.get("types"))
            add("weights", arm, "bits per weight (weight matrices)",
                verified.get("bits_per_weight"))  # fmt: skip
    versions: dict[tuple[str, str], set[str]] = {}
    for rec in quant.values():
        for pkg, ver in (rec.get("versions") or {}).items():
            versions.setdefault((pkg, "quantize"), set()).add(str(ver))
    for ev in evals:
        for pkg, ver in (ev.get("packages") or {}).items():
            versions.setdefault((pkg, "evaluate"), set()).add(str(ver))
        add("devices", ev["arm"], f"evaluate {ev['task']}", _device_text(ev.get("device")))
        add("evaluation", ev["arm"], f"{ev['task']} batch size", ev.get("batch_size_used"))
    for b in benches:
        dev = b.get("device") or {}
        add("devices", b["arm"], "benchmark", _device_text(dev))
        for pkg in ("torch", "transformers", "bitsandbytes", "compressed_tensors"):
            if dev.get(pkg):
                versions.setdefault((pkg.replace("_", "-"), "benchmark"), set()).add(str(dev[pkg]))
    for (pkg, stage), vers in sorted(versions.items()):
        add("packages", "", f"{pkg} ({stage})", ", ".join(sorted(vers)))
    for item, value in code_rows(study_outputs(source, download, quant, evals, benches), made_by):
        add("code", "", item, value)
    add("config", "", "config", config)
    return pd.DataFrame(rows, columns=PROVENANCE_COLUMNS)


def _installed_version(package: str) -> str:
    """The installed version of a distribution, or "not installed"."""
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _device_text(device: Mapping[str, Any] | None) -> str:
    """A device record (quantstudy.device) in a few words: kind, name, memory, CUDA and driver on
    a GPU."""
    if not device:
        return "unknown"
    kind = device.get("device_kind") or "?"
    parts = [f"{kind}: {device.get('name') or '?'}"]
    if device.get("total_memory_bytes"):
        parts.append(fmt_bytes(float(device["total_memory_bytes"])))
    for key in ("cuda", "driver"):
        if kind == "cuda" and device.get(key):
            parts.append(f"{key} {device[key]}")
    if device.get("used"):
        parts.append(f"used {device['used']}")
    return ", ".join(parts)


def provenance_html(prov: pd.DataFrame, study: str, config_yaml: str) -> str:
    """The provenance page: one table per section, then the config as it was run."""
    sections = []
    captions = {
        "model": "Where the weights every arm starts from came from, and their SHA256.",
        "weights": "Each arm as saved: method, parameters and the SHA256 of every weight file.",
        "devices": "The device each job ran on.",
        "evaluation": "Batch size each evaluation ran with (the same for every arm of a task).",
        "packages": "Package versions recorded by the jobs, by stage.",
        "code": (
            "The quant-study code each output was made by: its version, a hash of its code "
            "files, the git commit and whether a tracked code file was edited since."
        ),
    }
    warnings = prov[(prov["section"] == "code") & (prov["item"] == "warning")]["value"]
    if not warnings.empty:
        sections.append(("Mixed code versions", str(warnings.iloc[0]), ""))
    for section, rows in prov[prov["section"] != "config"].groupby("section", sort=False):
        sections.append(
            (section, captions.get(str(section), ""), html_table(rows.drop(columns="section")))
        )
    sections.append(
        (
            "config",
            "The study's config after defaults were filled in, as the workflow ran it.",
            f"<pre>{html.escape(config_yaml)}</pre>",
        )
    )
    return html_page(f"Study {study}: provenance", sections)


def read_json(path: Path | str) -> dict[str, Any] | None:
    """A JSON file's content, or None when it does not exist."""
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else None


def write_provenance(
    source_dir: Path | str,
    model_dirs: Sequence[Path | str],
    eval_files: Sequence[Path | str],
    bench_files: Sequence[Path | str],
    config: Mapping[str, Any],
    study: str,
    out_html: Path | str,
    out_csv: Path | str,
) -> pd.DataFrame:
    """The provenance table (CSV) and page (HTML) of a study from its jobs' records."""
    import yaml

    from .aggregate import load_quantize_records

    source_dir = Path(source_dir)
    quant = load_quantize_records(model_dirs)
    prov = provenance_rows(
        read_json(source_dir / "source.json"),
        read_json(source_dir.parent / "download" / "download.json"),
        quant,
        records.successes(eval_files),
        read_benchmarks(bench_files),
        config,
        code_version(),
    )
    prov.to_csv(out_csv, index=False)
    config_yaml = yaml.safe_dump(json.loads(json.dumps(config)), sort_keys=False)
    Path(out_html).write_text(provenance_html(prov, study, config_yaml))
    return prov


# --------------------------------------------------------------------------- failure modes


def _carriers(subjects: pd.DataFrame, alpha: float) -> list[str]:
    """Per arm and task, the subjects that carry its loss, in words: those with a significant
    loss after Holm, else the few with the largest losses (said to be not significant)."""
    out = []
    for (arm, task), rows in subjects.groupby(["arm", "task"], sort=False):
        sig = rows[rows["carries_loss"].astype(bool)].sort_values("diff")
        if len(sig):
            names = ", ".join(f"{r['subject']} ({r['diff']:+.3f}, Holm p = {r['p_holm']:.2g})"
                              for r in sig.to_dict("records"))  # fmt: skip
            out.append(f"{arm} on {task}: the loss is carried by {names}.")
            continue
        worst = rows[rows["diff"] < 0].sort_values("diff").head(3)
        if len(worst):
            names = ", ".join(
                f"{r['subject']} ({r['diff']:+.3f})" for r in worst.to_dict("records")
            )
            out.append(
                f"{arm} on {task}: no subject's loss is significant after Holm (α = {alpha:g}); "
                f"the largest losses: {names}."
            )
    return out


def failures_html(
    flips: pd.DataFrame,
    examples: pd.DataFrame,
    extraction: pd.DataFrame,
    subjects: pd.DataFrame,
    baseline: str,
    study: str,
    alpha: float = 0.05,
) -> str:
    """The failure-mode page (quantstudy.failures): flips each way, extraction's precision and
    recall and its empty-gold sentences, per-subject losses, then examples of flipped items."""
    sections = [
        (
            "Items flipped each way",
            f"Per arm, task and metric, against the baseline {baseline}: items the arm scores "
            "lower than the baseline (lost: for a 0/1 metric, baseline right and arm wrong), "
            "higher (gained) and alike; diff is the mean paired difference.",
            html_table(flips) if len(flips) else "<p>No paired items.</p>",
        )
    ]
    if len(extraction):
        sections.append(
            (
                "Structured extraction: precision, recall and sentences with no entity",
                "Per arm and extraction task: pooled true/false positives and false negatives, "
                "precision and recall (and their change against the baseline), micro-F1 (pooled), "
                "macro-F1 (mean per-sentence F1), JSON parse rate; on the sentences whose gold "
                "answer is empty, how many the arm answers with [] (rate with its 95% Wilson "
                "interval) and the false positives it adds there. Over-extraction lowers "
                "precision, not recall, and shows first on the empty sentences.",
                html_table(extraction),
            )
        )
    if len(subjects):
        sections.append(
            (
                "Subjects",
                " ".join(_carriers(subjects, alpha))
                + " Each subject's paired difference is tested within the subject (McNemar for "
                "0/1 scores, a sign-flip permutation test otherwise), Holm-adjusted across the "
                "task's subjects; carries_loss marks a significant loss.",
                html_table(subjects),
            )
        )
    for (arm, task), rows in examples.groupby(["arm", "task"], sort=False):
        shown = rows.drop(columns=["arm", "task"])
        sections.append(
            (
                f"Examples: {arm} on {task}",
                f"Items whose {rows['metric'].iloc[0]} the arm lost or gained against the "
                f"baseline, the largest changes first (prompt: its last characters).",
                html_table(shown),
            )
        )
    return html_page(f"Study {study}: how the arms fail", sections)
