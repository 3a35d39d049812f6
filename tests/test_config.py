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
    assert qconfig.typed(cfg).baseline == "base"


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
    qconfig.check(qconfig.typed(cfg), root=tmp_path)
    cfg["baseline"] = "nope"
    with pytest.raises(qconfig.ConfigError, match=r"^baseline: 'nope' is not one of the arms"):
        qconfig.typed(cfg)
    cfg.pop("baseline")
    cfg["arms"]["gptq"]["calibration"]["path"] = "missing.txt"
    with pytest.raises(
        qconfig.ConfigError, match=r"^arms\.gptq\.calibration\.path: .*missing\.txt"
    ):
        qconfig.check(qconfig.typed(cfg), root=tmp_path)
    cfg2 = validated({**MINIMAL, "model": {"source": "gguf", "path": "x.gguf"}})
    with pytest.raises(qconfig.ConfigError, match=r"^model\.path: .*x\.gguf.* does not exist"):
        qconfig.check(qconfig.typed(cfg2), root=tmp_path)


def test_no_baseline_arm_is_an_error():
    cfg = validated({**MINIMAL, "arms": {"nf4": {"method": "bnb-4bit"}}})
    with pytest.raises(qconfig.ConfigError, match="^baseline: no arm has method 'baseline'"):
        qconfig.typed(cfg)


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


SHIPPED = ["config.yaml", *sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("config/*.yaml"))]


@pytest.mark.parametrize("path", SHIPPED)
def test_shipped_configs_are_valid(path):
    """config.yaml and every config under config/ pass the schema, the typed model and checks."""
    assert {"config/demo.yaml", "config/llama-3.2-1b-shapes.yaml"} <= set(SHIPPED)
    cfg = qconfig.load(ROOT / path, root=ROOT)
    study = qconfig.typed(cfg)
    assert study.baseline in cfg["arms"]
    assert {a: s.params() for a, s in study.arms.items()} == {
        a: s.params() for a, s in parse_arms(cfg).items()
    }


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
    """The GPU benchmark study must measure the same arms as the real study, except its GGUF
    arms: llama.cpp runs those on the CPU (docs/gguf.md), so a GPU study has nothing to add."""
    real = qconfig.load(ROOT / "config.yaml", root=ROOT)
    shapes = qconfig.load(ROOT / "config" / "llama-3.2-1b-shapes.yaml", root=ROOT)

    def without_calibration(arms):
        return {
            a: {k: v for k, v in s.items() if k != "calibration"}
            for a, s in arms.items()
            if s["method"] != "gguf"
        }

    assert any(s["method"] == "gguf" for s in real["arms"].values())
    assert without_calibration(shapes["arms"]) == without_calibration(real["arms"])
    assert shapes["baseline"] == real["baseline"]


# --- the typed model (quantstudy.study) ----------------------------------------------------


def test_numbers_are_numbers():
    """A string is not a number anywhere in the config, and the error names the field."""
    with pytest.raises(
        qconfig.ConfigError,
        match=r"^arms\.x\.group_size: Input should be a valid integer \(got '64'\)",
    ):
        parse_arm("x", {"method": "gptq", "group_size": "64"})
    cfg = validated(MINIMAL)
    cfg["arms"]["gptq"]["group_size"] = "64"  # as if the schema had let it through
    with pytest.raises(qconfig.ConfigError, match=r"^arms\.gptq\.group_size: .*valid integer"):
        qconfig.typed(cfg)
    for section, field, bad in [
        ("analysis", "margin", "0.01"),
        ("analysis", "n_boot", True),
        ("evaluation", "max_batch_size", 8.0),
    ]:
        cfg = validated(MINIMAL)
        cfg[section][field] = bad
        with pytest.raises(qconfig.ConfigError, match=rf"^{section}\.{field}: Input should be"):
            qconfig.typed(cfg)
    cfg = validated(MINIMAL)
    cfg["analysis"]["margin"] = 1  # an int where a float is expected: kept as written
    assert qconfig.typed(cfg).analysis.margin == 1
    assert parse_arm("i", {"method": "bnb-int8", "threshold": 6}).params()["threshold"] == 6


def test_typed_errors_name_the_field():
    cfg = validated(MINIMAL)
    cfg["tasks"]["arc_easy"]["batch_size"] = "8"
    with pytest.raises(qconfig.ConfigError, match=r"^tasks\.arc_easy\.batch_size: .*or 'auto'"):
        qconfig.typed(cfg)
    with pytest.raises(
        qconfig.ConfigError, match=r"^arms\.x\.calibration\.num_sample: unknown field; did you "
    ):
        parse_arm("x", {"method": "awq", "calibration": {"num_sample": 8}})
    with pytest.raises(qconfig.ConfigError, match=r"^arms\.x\.method: 'bnb-5bit' is not one of"):
        parse_arm("x", {"method": "bnb-5bit"})
    with pytest.raises(qconfig.ConfigError, match=r"^arms\.x\.name: unknown field"):
        parse_arm("x", {"method": "baseline", "name": "y"})


def test_typed_arms_keep_their_parameters():
    """quantize.json's `parameters` are the typed arm's params(): every field, name left out."""
    arms = qconfig.typed(validated(MINIMAL)).arms
    assert arms["gptq"].name == "gptq" and arms["gptq"].bits == 4
    assert arms["gptq"].params() == {
        "method": "gptq", "dtype": "bf16", "bits": 4, "symmetric": True, "group_size": 64,
        "ignore": ("lm_head",), "dampening_frac": 0.01,
        "calibration": {"path": None, "dataset": "wikitext", "config_name": "wikitext-2-raw-v1",
                        "split": "train", "text_field": "text", "num_samples": 256,
                        "seq_len": 2048, "seed": 0},
    }  # fmt: skip
    assert arms["nf4"].params() == {
        "method": "bnb-4bit", "dtype": "bf16", "quant_type": "nf4", "double_quant": True,
        "compute_dtype": "bf16", "quant_storage": "uint8", "skip_modules": ("lm_head",),
    }  # fmt: skip
    assert (arms["base"].params(), arms["base"].bits) == (
        {"method": "baseline", "dtype": "bf16"},
        16,
    )


# --- benchmark settings: checked at the start, typed by DEFAULT_SETTINGS --------------------


def with_settings(settings):
    cfg = validated(MINIMAL)
    cfg["benchmark"]["settings"] = settings
    return cfg


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"decode": {"new_tokenz": 8}},
         r"^benchmark\.settings\.decode\.new_tokenz: unknown setting; did you mean 'new_tokens'\?"),
        ({"decode": {"new_tokens": "8"}},
         r"^benchmark\.settings\.decode\.new_tokens: Input should be a valid integer \(got '8'\)"),
        ({"warmup": True}, r"^benchmark\.settings\.warmup: Input should be a valid integer"),
        ({"prefill": {"prompt_lengths": [8, "16"]}},
         r"^benchmark\.settings\.prefill\.prompt_lengths\.1: Input should be a valid integer"),
        ({"bandwidth": {"bytes": 1.5}}, r"^benchmark\.settings\.bandwidth\.bytes: .*integer"),
        ({"interleave": "yes"}, r"^benchmark\.settings\.interleave: Input should be 'auto', true"),
        ({"static": {"compile_mode": 1}}, r"^benchmark\.settings\.static\.compile_mode: .*string"),
        ({"static": {"try_compile_modes": ["max-autotun"]}},
         r"^benchmark\.settings\.static\.try_compile_modes: 'max-autotun' is not one of default, "),
        ({"static": {"fuse_projections": "yes"}},
         r"^benchmark\.settings\.static\.fuse_projections: Input should be 'auto', true"),
        ({"decode": 8}, r"^benchmark\.settings\.decode: Input should be a valid dictionary"),
        ({"decode": {"new_tokens": 1}},
         r"^benchmark\.settings\.decode\.new_tokens: must be >= 2"),  # resolve_settings' own check
        ({"prefill": {"modes": ["eagr"]}}, r"^benchmark\.settings\.prefill\.modes: \['eagr'\]"),
    ],
)  # fmt: skip
def test_benchmark_settings_are_checked(settings, message):
    with pytest.raises(qconfig.ConfigError, match=message):
        qconfig.typed(with_settings(settings))


def test_benchmark_settings_types_follow_the_defaults():
    """What a setting takes follows its default in DEFAULT_SETTINGS: None also takes a whole
    number, "auto" also takes true and false, a list takes its default's element type."""
    from quantstudy.benchmark import DEFAULT_SETTINGS, SMALL_SETTINGS, resolve_settings
    from quantstudy.study import settings_model

    from .conftest import BENCH_SETTINGS

    for settings in ({}, SMALL_SETTINGS, BENCH_SETTINGS, {"interleave": False,
                     "static": {"compile": True}, "prefill": {"warmup": 2, "repeats": None}}):  # fmt: skip
        typed = qconfig.typed(with_settings(settings)).benchmark.settings
        assert typed == settings  # the overrides, as the benchmark job gets them
        assert settings_model().model_validate(settings).model_dump() == resolve_settings(settings)
    assert settings_model()().model_dump() == DEFAULT_SETTINGS


# --- one set of defaults: the typed model's, stated again by the schema ---------------------

BOUNDS = {"minimum": "ge", "exclusiveMinimum": "gt", "maximum": "le", "exclusiveMaximum": "lt"}


def _facts(node, defs):
    """The bounds and choices a JSON schema node states (through $ref, anyOf and oneOf)."""
    while "$ref" in node:
        node = {
            **defs[node["$ref"].rsplit("/", 1)[1]],
            **{k: v for k, v in node.items() if k != "$ref"},
        }
    out = {}
    for key, value in node.items():
        if key in BOUNDS or key in BOUNDS.values():
            out[BOUNDS.get(key, key)] = value
        elif key in ("enum", "const"):
            out["choices"] = out.get("choices", set()) | set(value if key == "enum" else [value])
    for sub in node.get("anyOf", []) + node.get("oneOf", []):
        for key, value in _facts(sub, defs).items():
            out[key] = out.get(key, set()) | value if key == "choices" else value
    return out


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def _nested_model(annotation):
    from typing import get_args

    from pydantic import BaseModel

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        if found := _nested_model(arg):
            return found
    return None


def _compare(cls, node, schema, path, seen):
    from pydantic import BaseModel

    from quantstudy.schema_doc import _resolve

    node = _resolve(schema, node)
    props = node["properties"]
    assert set(cls.model_fields) == set(props), f"{path or 'top level'}: fields differ"
    pyd = cls.model_json_schema()
    for name, field in cls.model_fields.items():
        where = f"{path}{name}"
        seen.append(where)
        sub = _resolve(schema, props[name])
        if "default" in sub:
            assert not field.is_required(), f"{where}: the schema has a default, the model none"
            default = field.get_default(call_default_factory=True)
            if isinstance(default, BaseModel):
                assert default == type(default).model_validate(sub["default"]), where
            else:
                assert _plain(default) == sub["default"], (
                    f"{where}: {default!r} vs {sub['default']!r}"
                )
                assert type(_plain(default)) is type(sub["default"]), f"{where}: types differ"
        else:
            assert field.is_required() or field.get_default() is None, (
                f"{where}: default only in the model"
            )
        assert _facts(pyd["properties"][name], pyd.get("$defs", {})) == _facts(
            sub, schema["$defs"]
        ), f"{where}: bounds or choices differ"
        nested = _nested_model(field.annotation)
        if name == "arms" or nested is None:
            continue
        if "properties" not in sub:  # name -> entry (tasks)
            sub = sub["additionalProperties"]
        _compare(nested, sub, schema, f"{where}.", seen)


def test_schema_and_typed_model_state_the_same_defaults():
    """Every field of schemas/config.schema.yaml is a field of the typed model and the other way
    round, with the same default (or none on both), bounds and choices: the reference generated
    from the schema, and the defaults it fills in, say what the code does."""
    from quantstudy.arms import (
        BaselineArm,
        Bnb4bitArm,
        BnbInt8Arm,
        Fp8Arm,
        LlmCompressorArm,
        W8A8Arm,
    )
    from quantstudy.study import Study

    schema = yaml.safe_load(qconfig.SCHEMA.read_text())
    seen = []
    _compare(Study, schema, schema, "", seen)
    for cls, key in [(BaselineArm, "arm_baseline"), (BnbInt8Arm, "arm_bnb_int8"),
                     (Bnb4bitArm, "arm_bnb_4bit"), (LlmCompressorArm, "arm_llmcompressor"),
                     (Fp8Arm, "arm_fp8"), (W8A8Arm, "arm_w8a8")]:  # fmt: skip
        _compare(cls, schema["$defs"][key], schema, f"arms.<{key}>.", seen)
    for field in ("analysis.margin", "model.tokenizer.path", "tasks.batch_size",
                  "arms.<arm_llmcompressor>.calibration.seq_len", "benchmark.settings"):  # fmt: skip
        assert field in seen


def test_task_families_name_configured_tasks_once():
    cfg = validated(MINIMAL)
    cfg["analysis"]["families"] = {"extraction": {"tasks": ["arc_easy"]}}
    qconfig.validate_schema(cfg)
    family = qconfig.typed(cfg).analysis.families["extraction"]
    assert family.tasks == ["arc_easy"] and family.require == "not-worse"
    cfg["analysis"]["families"] = {"extraction": {"tasks": ["conll2003_ner"]}}
    with pytest.raises(
        qconfig.ConfigError,
        match=r"^analysis\.families\.extraction\.tasks: 'conll2003_ner' is not one of the tasks",
    ):
        qconfig.typed(cfg)
    cfg["analysis"]["families"] = {"a": {"tasks": ["arc_easy"]}, "b": {"tasks": ["arc_easy"]}}
    with pytest.raises(qconfig.ConfigError, match=r"^analysis\.families\.b\.tasks: 'arc_easy' is "
                       "already in family 'a'"):  # fmt: skip
        qconfig.typed(cfg)
    cfg["analysis"]["families"] = {"a": {"tasks": ["arc_easy"], "require": "no-loss"}}
    with pytest.raises(qconfig.ConfigError, match=r"^analysis\.families\.a\.require: "):
        qconfig.typed(cfg)


def test_the_demo_configs_extraction_block_is_valid_when_uncommented():
    """config/demo.yaml holds demo_ner and its analysis settings commented out (time); with the
    comment marks removed the config is valid and names the extraction family."""
    text = (ROOT / "config" / "demo.yaml").read_text()
    on = "\n".join(
        line.replace("# ", "", 1) if line.lstrip("# ").startswith(("demo_ner:", "batch_size:",
        "num_fewshot: 0", "analysis:", "primary_metrics:", "demo_ner: micro", "families:",
        "extraction:", "tasks: [demo_ner]", "require:")) and line.lstrip().startswith("#")
        else line
        for line in text.splitlines()
    )  # fmt: skip
    cfg = yaml.safe_load(on)
    assert "demo_ner" in cfg["tasks"]
    qconfig.validate_schema(cfg)
    study = qconfig.typed(cfg)
    assert study.analysis.families["extraction"].tasks == ["demo_ner"]
    assert study.analysis.primary_metrics == {"demo_ner": "micro_f1"}
