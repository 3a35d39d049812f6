"""The report as a reader sees it: the generated front page, the provenance, and the rendered
report.html of a real (tiny) study opened in headless Chromium, including a failed arm."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml
from docutils.core import publish_parts
from jinja2 import Environment

from quantstudy import aggregate, compare, policy, report, stats
from tests import browser
from tests.conftest import ROOT, break_save, copy_study, snakemake, write_config
from tests.test_compare import ARMS, TASKS, study  # noqa: F401  (study is a fixture)

FIGURES = ["accuracy", "relative_change", "ablation_4bit", "score_vs_memory", "latency",
           "throughput", "roofline", "quantize_time"]  # fmt: skip


def render_front_page(workdir: Path, config: dict) -> str:
    """report/workflow.rst rendered the way `snakemake --report` does (Jinja, then docutils)."""
    text = (ROOT / "report" / "workflow.rst").read_text()
    rst = (
        Environment(trim_blocks=True, lstrip_blocks=True)
        .from_string(text)
        .render(snakemake=SimpleNamespace(config=config), categories={}, files=[])
    )
    # the category links come from Snakemake's own link block; stand in for it
    rst += "\n\n"
    for cat in ("1. Decision", "2. Accuracy", "3. Speed", "4. Memory", "5. Provenance"):
        rst += f".. _{cat}: javascript:app.showCategory('{cat.replace(' ', '%20')}')\n"
    cwd = Path.cwd()
    try:
        os.chdir(workdir)
        return publish_parts(rst, writer="html", settings_overrides={"halt_level": 2})["html_body"]
    finally:
        os.chdir(cwd)


# --------------------------------------------------------------------------- generated text


def test_front_page_opens_with_the_summary_and_decision_table(study, tmp_path):  # noqa: F811
    root, _, out = study
    summary = tmp_path / "results" / "synthetic" / "report" / "summary.rst"
    summary.parent.mkdir(parents=True)
    shutil.copy(out["summary"], summary)
    config = {
        "study": "synthetic",
        "analysis": {"margin": 0.05, "recommend": "smallest-equivalent"},
    }
    page = render_front_page(tmp_path, config)
    assert page.index("Recommended: small") < page.index("<table")
    table = pd.read_html(io.StringIO(page[page.index("<table") :]))[0]
    assert table["arm"].tolist() == list(ARMS)
    assert table.columns.tolist()[:4] == ["arm", "method", "memory (× baseline)",
                                          "decode speed (× baseline)"]  # fmt: skip
    assert table.set_index("arm").loc["gone", "mc"] == "missing"
    assert "quantize failed" in table.set_index("arm").loc["gone", "note"]
    assert '<tr class="recommended"><td>small</td>' in page  # set in bold
    assert "Power: the smallest difference" in page


def test_decision_page_holds_the_csv_tables(study):  # noqa: F811
    _, _, out = study
    page = out["decision_html"].read_text()
    tables = pd.read_html(out["decision_html"])
    assert len(tables) == 3
    decision, comparisons, scores = tables
    assert decision["arm"].tolist() == list(ARMS)
    assert len(comparisons) == len(pd.read_csv(out["comparisons"]))
    assert len(scores) == len(pd.read_csv(out["scores"]))
    assert '<tr class="recommended">' in page and '<td class="worse">' in page


def test_summary_counts_verdicts_and_names_the_missing_arm(study):  # noqa: F811
    _, _, out = study
    md = out["summary_md"].read_text()
    decision = pd.read_csv(out["decision"])
    worse = int((decision[[f"verdict:{t}" for t in TASKS]] == "worse").sum().sum())
    assert f"{worse} worse" in md
    assert "gone — missing: quantize failed (log: x)" in md
    assert "| small | bnb-4bit |" in md


def test_provenance_has_hashes_devices_versions_and_config(study):  # noqa: F811
    root, files, _ = study
    quant = aggregate.load_quantize_records(files["models"])
    source = {"source": {"source": "hub", "repo_id": "org/model", "revision": "abc123"},
              "sha256": {"model.safetensors": "srcsha"}}  # fmt: skip
    benches = [json.loads(p.read_text()) for p in files["bench"]]
    prov = report.provenance_rows(source, {"commit": "abc123"}, quant, [], benches, {"arms": ARMS})
    facts = {(r.section, r.arm, r.item): r.value for r in prov.itertuples()}
    assert facts[("model", "", "source.revision")] == "abc123"
    assert facts[("model", "", "sha256 model.safetensors")] == "srcsha"
    for arm in quant:
        assert facts[("weights", arm, "sha256 model.safetensors")] == f"sha-{arm}"
    assert facts[("weights", "gone", "status")] == "missing: not built"
    assert facts[("devices", "small", "benchmark")].startswith("cpu: test cpu")
    assert facts[("packages", "", "torch (quantize)")] == "2.13.0"
    assert json.loads(facts[("config", "", "config")]) == {"arms": ARMS}


# --------------------------------------------------------------------------- the real report


def needs_chromium():
    """The report is checked in a real browser: without one the test fails, it is not skipped."""
    if not (shutil.which("chromium") or shutil.which("chromium-browser")):
        pytest.fail(
            "headless Chromium is needed to check the report (Debian: apt-get install chromium)"
        )


def results(work: Path) -> Path:
    return work / "results" / "tiny"


@pytest.mark.workflow
def test_study_tables_equal_stats_on_its_samples(tiny_study):
    config = yaml.safe_load((tiny_study / "config.yaml").read_text())
    samples = compare.load_samples(sorted((results(tiny_study) / "eval").glob("*/*.samples.jsonl")))
    a = {"margin": 0.01, "alpha": 0.05, "n_boot": 2000, "seed": 0} | config.get("analysis", {})
    scores, comparisons = stats.compare(samples, "fp32", a["margin"], a["alpha"], a["n_boot"],
                                        a["seed"], arms=list(config["arms"]),
                                        tasks=list(config["tasks"]))  # fmt: skip
    written = pd.read_csv(results(tiny_study) / "tables" / "comparisons.csv")
    pd.testing.assert_frame_equal(
        written[list(stats.COMPARISON_COLUMNS)].drop(columns="equivalent"),
        comparisons.drop(columns="equivalent"),
        check_dtype=False,
    )
    decision = pd.read_csv(results(tiny_study) / "tables" / "decision.csv")
    assert decision["arm"].tolist() == list(config["arms"])
    assert (decision["status"] == "ok").all()
    verdicts = policy.task_verdicts(comparisons)
    by_arm = decision.set_index("arm")
    for arm in config["arms"]:
        for task in config["tasks"]:
            expected = "baseline" if arm == "fp32" else verdicts[arm][task]
            assert by_arm.loc[arm, f"verdict:{task}"] == expected


def check_rendered(report_html: Path, workdir: Path, arms: list[str]) -> dict:
    """Open the report in Chromium; assert the front page's decision table and every result."""
    seen = browser.rendered_check(report_html, workdir)
    front = seen["front"]
    text = front["text"]
    first = min(i for i in (text.find("Recommended"), text.find("No arm is recommended")) if i >= 0)
    assert first < text.index("How to read it")
    header, *rows = front["table"]
    assert header[:4] == ["arm", "method", "memory (× baseline)", "decode speed (× baseline)"]
    assert [r[0] for r in rows] == arms
    by_name = {Path(p).name: r for p, r in seen["results"].items()}
    for name in FIGURES:
        fig = by_name[f"{name}.png"]
        assert fig["shown"] and fig["width"] > 100 and fig["height"] > 100, (name, fig)
        assert fig["caption"], name
    decision = by_name["decision.html"]
    assert decision["shown"] and decision["tables"] == 3
    for arm in arms:
        assert arm in decision["text"]
    provenance = by_name["provenance.html"]
    assert provenance["shown"] and "sha256 model.safetensors" in provenance["text"]
    failures = by_name["failures.html"]  # how the arms fail (issue #16)
    assert failures["shown"] and "Items flipped each way" in failures["text"]
    return seen


@pytest.mark.workflow
def test_report_shows_decision_table_and_every_figure(tiny_study, tmp_path):
    needs_chromium()
    config = yaml.safe_load((tiny_study / "config.yaml").read_text())
    seen = check_rendered(tiny_study / "report.html", tmp_path, list(config["arms"]))
    rows = {r[0]: r for r in seen["front"]["table"][1:]}
    assert "baseline" in rows["fp32"][-1]
    shot = browser.screenshot(tiny_study / "report.html", tmp_path / "first-screen.png", tmp_path)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.workflow
def test_a_failed_arm_is_in_the_report_as_missing(tiny_study, tmp_path):
    """The run in which an arm fails builds the report, which marks that arm missing and why."""
    needs_chromium()
    work = copy_study(tiny_study, tmp_path / "study")
    config = yaml.safe_load((work / "config.yaml").read_text())
    config["arms"]["int8_b"] = {**config["arms"]["int8"], "threshold": 5.0}
    write_config(work, config)
    snakemake(work, "-c2", env=break_save(tmp_path, "int8_b"))
    snakemake(work, "--report", str(work / "report.html"))
    decision = pd.read_csv(results(work) / "tables" / "decision.csv").set_index("arm")
    assert list(decision.index) == list(config["arms"])
    assert decision.loc["int8_b", "status"].startswith("missing: quantize failed: RuntimeError")
    assert (decision.loc["int8_b", [f"verdict:{t}" for t in config["tasks"]]] == "missing").all()
    assert not decision.loc["int8_b", "recommended"]
    seen = check_rendered(work / "report.html", tmp_path, list(config["arms"]))
    row = {r[0]: r for r in seen["front"]["table"][1:]}["int8_b"]
    assert "missing" in row and "quantize failed" in row[-1]
