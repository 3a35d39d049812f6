"""The tiny study's analysis, frozen: its jobs' records and the tables compare made from them.

tests/data/golden/ holds one finished run of the tiny study (tests/conftest.py): every job
record the analysis reads (samples and evaluation JSONs, quantize.json, benchmark JSONs), the
study's arms, tasks and analysis settings, and the tables `compare` wrote from them (scores,
comparisons, decision). tests/test_golden.py recomputes the tables from the records, so a
refactoring that changes any number, verdict or column fails there, whatever CPU runs it.

To freeze a new run, after a change meant to move the tables (say why in the commit):

    python -m tests.golden <finished tiny-study workdir>
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

GOLDEN = Path(__file__).resolve().parent / "data" / "golden"
TABLES = ("scores", "comparisons", "decision")


def study(root: Path = GOLDEN) -> dict[str, Any]:
    """The frozen study's settings: study, arms, tasks, baseline, analysis."""
    return json.loads((root / "study.json").read_text())


def inputs(root: Path = GOLDEN) -> dict[str, list[Path]]:
    """The records compare reads, as the workflow lists them (every configured arm and task)."""
    s = study(root)
    res = root / "records"
    return {
        "samples": [res / "eval" / a / f"{t}.samples.jsonl" for a in s["arms"] for t in s["tasks"]],
        "evals": [res / "eval" / a / f"{t}.json" for a in s["arms"] for t in s["tasks"]],
        "models": [res / "models" / a for a in s["arms"]],
        "bench": [res / "bench" / f"{a}.json" for a in s["arms"]],
    }


def compute(out_dir: Path, root: Path = GOLDEN) -> dict[str, Path]:
    """Run compare on the frozen records; the paths of the tables it wrote."""
    from quantstudy import compare
    from quantstudy.study import Analysis

    s = study(root)
    files = inputs(root)
    out = {k: out_dir / f"{k}.out" for k in ("decision_html", "summary", "summary_md")}
    out |= {k: out_dir / f"{k}.csv" for k in TABLES}
    compare.run(
        files["samples"], files["evals"], files["models"], files["bench"], s["arms"],
        s["tasks"], s["baseline"], Analysis.parse(s["analysis"], ("analysis",)), s["study"], out,
    )  # fmt: skip
    return {k: out[k] for k in TABLES}


def freeze(workdir: Path, root: Path = GOLDEN) -> None:
    """Copy a finished tiny study's records and tables into root."""
    from quantstudy import config as qconfig

    config = yaml.safe_load((workdir / "config.yaml").read_text())
    qconfig.validate_schema(config)  # the analysis settings as the workflow ran them
    name = config["study"]
    src = workdir / "results" / name
    if root.exists():
        shutil.rmtree(root)
    for arm in config["arms"]:
        for task in config["tasks"]:
            for suffix in (".json", ".samples.jsonl"):
                rel = Path("eval") / arm / f"{task}{suffix}"
                _copy(src / rel, root / "records" / rel)
        _copy(
            src / "models" / arm / "quantize.json", root / "records/models" / arm / "quantize.json"
        )
        _copy(src / "bench" / f"{arm}.json", root / "records" / "bench" / f"{arm}.json")
    for table in TABLES:
        _copy(src / "tables" / f"{table}.csv", root / "tables" / f"{table}.csv")
    settings = {
        "study": name,
        "arms": config["arms"],
        "tasks": list(config["tasks"]),
        "baseline": qconfig.baseline_arm(config),
        "analysis": config["analysis"],
    }
    (root / "study.json").write_text(json.dumps(settings, indent=2) + "\n")  # arms in order


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


if __name__ == "__main__":
    freeze(Path(sys.argv[1]))
