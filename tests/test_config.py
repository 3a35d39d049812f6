"""Config validation: the schema's defaults, and errors that name the field before any job runs."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml
from snakemake.exceptions import WorkflowError

from quantstudy import config as qconfig
from quantstudy.arms import Bnb4bitArm, LlmCompressorArm, parse_arm, parse_arms

ROOT = Path(__file__).resolve().parent.parent

MINIMAL = {
    "study": "t",
    "model": {"source": "hub", "repo_id": "org/model"},
    "arms": {
        "base": {"method": "baseline"},
        "nf4": {"method": "bnb-4bit", "double_quant": True},
        "gptq": {"method": "gptq", "group_size": 64},
    },
    "tasks": {"arc_easy": None},
}


def validated(cfg):
    cfg = copy.deepcopy(cfg)
    qconfig.validate_schema(cfg)
    return cfg


def test_defaults_are_filled():
    cfg = validated(MINIMAL)
    assert cfg["arms"]["base"] == {"method": "baseline", "dtype": "bf16"}
    nf4 = cfg["arms"]["nf4"]
    assert (nf4["quant_type"], nf4["double_quant"], nf4["compute_dtype"]) == ("nf4", True, "bf16")
    assert cfg["arms"]["gptq"]["calibration"]["num_samples"] == 256
    assert cfg["tasks"]["arc_easy"]["batch_size"] == "auto"
    assert cfg["evaluation"]["include_path"] == "tasks"
    assert qconfig.baseline_arm(cfg) == "base"


@pytest.mark.parametrize(
    "mutate, field, words",
    [
        (
            lambda c: c["arms"]["nf4"].update(method="bnb-5bit"),
            "['arms']['nf4']['method']",
            "bnb-5bit",
        ),
        (
            lambda c: c["arms"]["nf4"].update(quant_type="nf5"),
            "['arms']['nf4']['quant_type']",
            "nf5",
        ),
        (lambda c: c["arms"]["gptq"].update(quant_type="nf4"), "['arms']['gptq']", "quant_type"),
        (lambda c: c.pop("tasks"), "", "'tasks' is a required property"),
        (lambda c: c["tasks"].update(arc_easy={"limt": 5}), "['tasks']['arc_easy']", "limt"),
        (lambda c: c["arms"].update({"a/b": {"method": "baseline"}}), "['arms']", "a/b"),
        (lambda c: c["model"].pop("repo_id"), "['model']", "repo_id"),
    ],
)
def test_schema_errors_name_the_field(mutate, field, words):
    cfg = copy.deepcopy(MINIMAL)
    mutate(cfg)
    with pytest.raises(WorkflowError) as err:
        qconfig.validate_schema(cfg)
    msg = str(err.value)
    assert words in msg
    assert f"On instance{field}" in msg


def test_check_names_missing_files_and_baseline(tmp_path):
    cfg = validated(MINIMAL)
    (tmp_path / "tasks").mkdir()
    qconfig.check(cfg, root=tmp_path)
    cfg["baseline"] = "nope"
    with pytest.raises(qconfig.ConfigError, match=r"^baseline: 'nope' is not one of the arms"):
        qconfig.check(cfg, root=tmp_path)
    cfg.pop("baseline")
    cfg["arms"]["gptq"]["calibration"]["path"] = "missing.txt"
    with pytest.raises(
        qconfig.ConfigError, match=r"^arms\.gptq\.calibration\.path: .*missing\.txt"
    ):
        qconfig.check(cfg, root=tmp_path)
    cfg2 = validated({**MINIMAL, "model": {"source": "gguf", "path": "x.gguf"}})
    with pytest.raises(qconfig.ConfigError, match=r"^model\.path: .*x\.gguf.* does not exist"):
        qconfig.check(cfg2, root=tmp_path)


def test_no_baseline_arm_is_an_error():
    cfg = validated({**MINIMAL, "arms": {"nf4": {"method": "bnb-4bit"}}})
    with pytest.raises(qconfig.ConfigError, match="^baseline: no arm has method 'baseline'"):
        qconfig.baseline_arm(cfg)


def test_typed_arms_reject_unknown_fields():
    arms = parse_arms(validated(MINIMAL))
    assert isinstance(arms["nf4"], Bnb4bitArm) and arms["nf4"].double_quant
    assert isinstance(arms["gptq"], LlmCompressorArm) and arms["gptq"].scheme_name == "W4A16"
    assert arms["gptq"].calibration.seq_len == 2048
    with pytest.raises(
        qconfig.ConfigError, match=r"^arms\.x\.quant_type: 'nf5' is not one of nf4, fp4"
    ):
        parse_arm("x", {"method": "bnb-4bit", "quant_type": "nf5"})
    with pytest.raises(
        qconfig.ConfigError, match=r"^arms\.x\.group: unknown field for method 'gptq'"
    ):
        parse_arm("x", {"method": "gptq", "group": 64})


@pytest.mark.parametrize(
    "path", ["config.yaml", "config/demo.yaml", "config/llama-3.2-1b-shapes.yaml"]
)
def test_shipped_configs_are_valid(path):
    if not (ROOT / path).exists():
        pytest.skip(f"{path} not shipped")
    cfg = qconfig.load(ROOT / path, root=ROOT)
    parse_arms(cfg)
    assert qconfig.baseline_arm(cfg) in cfg["arms"]


def test_config_reference_matches_schema():
    """The config reference (docs/configuration.md) is generated from the schema; no drift."""
    from quantstudy.schema_doc import reference_markdown

    readme = (ROOT / "docs" / "configuration.md").read_text()
    begin, end = "<!-- config-reference:begin -->", "<!-- config-reference:end -->"
    assert begin in readme and end in readme, (
        "docs/configuration.md lacks the generated config reference"
    )
    current = readme.split(begin)[1].split(end)[0].strip()
    schema = yaml.safe_load(qconfig.SCHEMA.read_text())
    assert current == reference_markdown(schema).strip(), (
        "docs/configuration.md is stale: run `python -m quantstudy.schema_doc --write`"
    )
    # every arm field of every method is documented
    for name in ("quant_type", "double_quant", "compute_dtype", "group_size", "threshold"):
        assert re.search(rf"`{name}`", current)


def test_shapes_study_has_the_default_studys_arms():
    """The GPU benchmark study must measure the same arms as the real study."""
    real = qconfig.load(ROOT / "config.yaml", root=ROOT)
    shapes = qconfig.load(ROOT / "config" / "llama-3.2-1b-shapes.yaml", root=ROOT)

    def without_calibration(arms):
        return {a: {k: v for k, v in s.items() if k != "calibration"} for a, s in arms.items()}

    assert without_calibration(shapes["arms"]) == without_calibration(real["arms"])
    assert shapes["baseline"] == real["baseline"]
