"""Bad input stops the workflow while it is parsed: an error that names the field (or file), no
job started, and every finished output left as it was (issue #13)."""

from __future__ import annotations

import copy
import json
import re
import runpy
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from snakemake.exceptions import WorkflowError

from quantstudy import config as qconfig
from quantstudy import preflight
from quantstudy.arms import Calibration
from quantstudy.calibration import read_calibration_file

from .conftest import ROOT, TINY_CONFIG, snakemake, tiny_config, write_config

CALIBRATION = ROOT / "config" / "calibration" / "demo.txt"

# A finished study as far as these tests care: files no bad config may remove or change.
FINISHED = {
    "results/tiny/source/config.json": TINY_CONFIG.read_text(),
    "results/tiny/source/model.safetensors": "weights",
    "results/tiny/models/gptq/quantize.json": '{"arm": "gptq"}',
    "results/tiny/models/fp32/quantize.json": '{"arm": "fp32"}',
    "results/tiny/eval/fp32/demo_capitals.json": '{"acc": 0.5}',
    "results/tiny/tables/decision.csv": "arm,verdict\n",
}


def small_config() -> dict:
    """The tiny study with the built-in tokenizer (no tokenizer files to prepare)."""
    config = tiny_config(Path("unused"), CALIBRATION)
    del config["model"]["tokenizer"]
    return config


def validated(config: dict) -> dict:
    config = copy.deepcopy(config)
    qconfig.validate_schema(config)
    return config


def typed(config: dict):
    """The typed study of a config, as the workflow builds it (schema defaults first)."""
    return qconfig.typed(validated(config))


def finished_workdir(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    for name, text in FINISHED.items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text(text)
    return work


def files(work: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(work)): p.read_bytes()
        for p in sorted(work.rglob("*"))
        if p.is_file() and ".snakemake" not in p.parts
    }


def run_refused(work: Path, *words: str) -> str:
    """Run the workflow for real (-c1); assert it stopped at parse time naming the field."""
    before = files(work)
    proc = snakemake(work, "-c1", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    for w in words:
        assert w in out, f"{w!r} not in:\n{out[-3000:]}"
    assert "Select jobs to execute" not in out and not (work / "logs").exists(), "a job ran"
    after = files(work)
    lost = {name for name in before if after.get(name) != before[name]}
    assert not lost, f"finished outputs removed or changed: {sorted(lost)}"
    return out


# --- 1. task names lm-eval does not know ----------------------------------------------------


def test_unknown_task_is_refused_before_any_job(tmp_path):
    work = finished_workdir(tmp_path)
    config = small_config()
    config["tasks"]["demo_capitalz"] = config["tasks"].pop("demo_capitals")
    write_config(work, config)
    run_refused(
        work,
        "Invalid config: tasks.demo_capitalz: lm-eval knows no task or group 'demo_capitalz'",
        "did you mean 'demo_capitals'",
    )


def test_task_check_knows_registry_groups_tags_and_include_path(tmp_path):
    """mmlu is a group, ai2_arc a tag, coqa a task, demo_capitals under include_path."""
    config = validated(small_config())
    config["tasks"] = {"mmlu": {}, "ai2_arc": {}, "coqa": {}, "demo_capitals": {}}
    preflight.check_tasks(typed(config), ROOT, cache_dir=tmp_path)
    config["tasks"]["hellaswg"] = {}
    with pytest.raises(qconfig.ConfigError, match=r"^tasks\.hellaswg: .*did you mean 'hellaswag'"):
        preflight.check_tasks(typed(config), ROOT, cache_dir=tmp_path)


def test_task_cache_is_looked_up_again_before_refusing(tmp_path, monkeypatch):
    """A cached index that predates a task (an edited lm-eval install) does not refuse it."""
    config = validated(small_config())
    config["tasks"] = {"arc_easy": {}}
    calls = []

    def names(include_path):
        calls.append(include_path)
        return ["demo_capitals"] if include_path else ["arc_easy", "mmlu"]

    monkeypatch.setattr(preflight, "lm_eval_names", names)
    monkeypatch.setattr(preflight, "_memo", {})
    cache = tmp_path / "cache"
    preflight.check_tasks(typed(config), ROOT, cache_dir=cache)
    assert calls == [ROOT / "tasks", None]
    (registry,) = cache.glob("lm-eval-registry-*.json")
    record = json.loads(registry.read_text())
    record["value"] = ["mmlu"]  # as if cached before arc_easy existed
    registry.write_text(json.dumps(record))
    monkeypatch.setattr(preflight, "_memo", {})
    calls.clear()
    preflight.check_tasks(typed(config), ROOT, cache_dir=cache)
    assert None in calls, "the stale registry was not looked up again"
    assert "arc_easy" in json.loads(registry.read_text())["value"]


# --- 1b. fields a schema does not type: benchmark settings -----------------------------------


@pytest.mark.parametrize(
    "decode, words",
    [
        ({"new_tokenz": 8}, "benchmark.settings.decode.new_tokenz: unknown setting; did you mean "
                            "'new_tokens'?"),
        ({"new_tokens": "8"}, "benchmark.settings.decode.new_tokens: Input should be a valid "
                              "integer (got '8')"),
    ],
)  # fmt: skip
def test_bad_benchmark_setting_is_refused_before_any_job(tmp_path, decode, words):
    """`benchmark.settings` is an open mapping to the schema: the typed model checks it at the
    start, not every benchmark job once it has run."""
    work = finished_workdir(tmp_path)
    config = small_config()
    config["benchmark"]["settings"] = {**config["benchmark"]["settings"], "decode": decode}
    write_config(work, config)
    run_refused(work, f"Invalid config: {words}")


# --- 2. calibration files -----------------------------------------------------------------


def test_empty_calibration_file_is_refused_before_any_job(tmp_path):
    work = finished_workdir(tmp_path)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n   \n\n")
    config = small_config()
    config["arms"]["gptq"]["calibration"]["path"] = str(empty)
    write_config(work, config)
    run_refused(work, "Invalid config: arms.gptq.calibration.path:", "holds no usable text")


def test_too_few_calibration_texts_are_refused_before_any_job(tmp_path):
    work = finished_workdir(tmp_path)
    short = tmp_path / "short.txt"
    short.write_text("one\n\ntwo\nthree\n")
    config = small_config()
    config["arms"]["awq"]["calibration"]["path"] = str(short)
    write_config(work, config)
    run_refused(
        work, "Invalid config: arms.awq.calibration.num_samples: 8 samples asked for", "only 3"
    )


def test_calibration_counts_what_quantize_reads(tmp_path):
    """One reader: the check counts exactly the texts quantize.calibration_texts draws from."""
    text = tmp_path / "c.txt"
    text.write_text("  a \n\n b\n\t\n")
    assert read_calibration_file(text) == ["a", "b"]
    rows = tmp_path / "c.jsonl"
    rows.write_text('{"t": " x "}\n\n{"t": ""}\n{"t": "y"}\n')
    assert read_calibration_file(rows, "t") == ["x", "y"]
    with pytest.raises(ValueError, match=r"line 1: no field 'text'"):
        read_calibration_file(rows, "text")
    cfg = {"path": str(rows), "text_field": "t", "num_samples": 2}
    qconfig.check_calibration("g", Calibration.parse(cfg), tmp_path)
    with pytest.raises(
        qconfig.ConfigError, match=r"^arms\.g\.calibration\.num_samples: 3 .*only 2"
    ):
        qconfig.check_calibration("g", Calibration.parse({**cfg, "num_samples": 3}), tmp_path)
    with pytest.raises(qconfig.ConfigError, match=r"^arms\.g\.calibration\.path: .*no field"):
        qconfig.check_calibration("g", Calibration.parse({**cfg, "text_field": "text"}), tmp_path)
    from quantstudy.arms import parse_arm
    from quantstudy.quantize import calibration_texts

    arm = parse_arm("g", {"method": "gptq", "calibration": cfg})
    assert sorted(calibration_texts(arm, tmp_path)) == ["x", "y"]


# --- 3. group sizes -----------------------------------------------------------------------


def test_group_size_that_does_not_divide_a_width_is_refused_before_any_job(tmp_path):
    work = finished_workdir(tmp_path)
    config = small_config()
    config["arms"]["gptq"]["group_size"] = 48
    write_config(work, config)
    run_refused(
        work,
        "Invalid config: arms.gptq.group_size: 48 does not divide the input width of "
        "model.layers.0.self_attn.q_proj (64); widths here: 64, 128",
    )


def test_group_size_check_skips_ignored_layers(tmp_path):
    layers = preflight.model_linear_layers(TINY_CONFIG, ("lm_head",))
    assert ("model.layers.1.mlp.down_proj", 128) in layers
    assert not any(name == "lm_head" for name, _ in layers)
    assert {w for _, w in layers} == {64, 128}
    skipped = preflight.model_linear_layers(TINY_CONFIG, ("lm_head", "down_proj"))
    assert {w for _, w in skipped} == {64}
    config = validated(small_config())
    config["arms"]["awq"]["group_size"] = 128
    with pytest.raises(
        qconfig.ConfigError, match=r"^arms\.awq\.group_size: 128 does not divide .* \(64\)"
    ):
        preflight.check_group_sizes(typed(config), ROOT, tmp_path, cache_dir=tmp_path / "cache")
    config["arms"]["awq"]["ignore"] = [
        "lm_head",
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
    ]
    preflight.check_group_sizes(typed(config), ROOT, tmp_path, cache_dir=tmp_path / "cache")


def test_hub_group_size_is_checked_after_download_before_anything_is_written(tmp_path, monkeypatch):
    """A hub model's widths are known once downloaded: the prepare_model job refuses a group size
    before it writes anything (so no quantize job starts), and later starts refuse at parse time."""
    work = tmp_path / "work"
    download = work / "results/tiny/download"
    config = small_config()
    config["model"] = {"source": "hub", "repo_id": "org/tiny", "dtype": "fp32"}
    config["arms"]["gptq"]["group_size"] = 48
    assert preflight.architecture_file(typed(config), ROOT, work) is None  # not known yet
    (download / "hub/snap").mkdir(parents=True)
    shutil.copy(TINY_CONFIG, download / "hub/snap/config.json")
    (download / "download.json").write_text(json.dumps({"snapshot": "hub/snap"}))
    assert preflight.architecture_file(typed(config), ROOT, work) == (
        download / "hub/snap/config.json"
    )
    # the prepare_model job, as Snakemake runs its script
    job = SimpleNamespace(
        scriptdir=str(ROOT / "scripts"),
        log=[str(work / "logs/tiny/prepare_model.log")],
        output=[str(work / "results/tiny/source")],
        input={"download": str(download)},
        params=SimpleNamespace(model=validated(config)["model"]),
        config=validated(config),
    )
    monkeypatch.chdir(work)
    with pytest.raises(qconfig.ConfigError, match=r"^arms\.gptq\.group_size: 48 does not"):
        runpy.run_path(str(ROOT / "scripts/prepare_model.py"), {"snakemake": job})
    assert not (work / "results/tiny/source").exists()
    assert "arms.gptq.group_size: 48" in (work / "logs/tiny/prepare_model.log").read_text()
    # the next start sees the download: refused while parsing
    shutil.rmtree(work / "logs")
    write_config(work, config)
    run_refused(work, "Invalid config: arms.gptq.group_size: 48 does not divide")


def test_model_transformers_cannot_build_is_left_to_the_jobs(tmp_path, caplog):
    """The check refuses only what it can judge: an unbuildable config warns and passes."""
    odd = tmp_path / "odd.json"
    odd.write_text(json.dumps({"model_type": "no-such-architecture", "hidden_size": 64}))
    config = validated(small_config())
    config["model"]["path"] = str(odd)
    preflight.check_group_sizes(typed(config), ROOT, tmp_path)
    assert "arms.gptq.group_size not checked" in caplog.text


# --- 4. model directories without a tokenizer ---------------------------------------------


def test_local_model_without_tokenizer_is_refused_before_any_job(tmp_path):
    work = finished_workdir(tmp_path)
    model = tmp_path / "model"
    model.mkdir()
    shutil.copy(TINY_CONFIG, model / "config.json")
    config = small_config()
    config["model"] = {"source": "local", "path": str(model), "dtype": "fp32"}
    write_config(work, config)
    run_refused(work, f"Invalid config: model.path: '{model}' holds no tokenizer")


def test_local_model_folder_needs_config_json(tmp_path):
    config = small_config()
    config["model"] = {"source": "local", "path": str(tmp_path)}
    with pytest.raises(qconfig.ConfigError, match=r"^model\.path: .* \(no config\.json\)"):
        qconfig.check(typed(config), ROOT)


def test_tokenizer_rule(tmp_path):
    qconfig.check_tokenizer("model.path", tmp_path / "missing")  # existence is checked elsewhere
    (tmp_path / "tokenizer.json").write_text("{}")
    qconfig.check_tokenizer("model.path", tmp_path)  # a tokenizer file: no transformers needed
    config = copy.deepcopy(small_config())
    config["model"]["tokenizer"] = {"path": str(tmp_path / "none")}
    (tmp_path / "none").mkdir()
    with pytest.raises(
        qconfig.ConfigError, match=r"^model\.tokenizer\.path: .* holds no tokenizer"
    ):
        qconfig.check(typed(config), ROOT)


# --- 5. names that are not safe as paths ----------------------------------------------------


@pytest.mark.parametrize("name", ["..", ".", ".hidden"])
def test_dot_arm_names_are_refused_before_any_job(tmp_path, name):
    work = finished_workdir(tmp_path)
    config = small_config()
    config["arms"][name] = config["arms"].pop("fp4")
    write_config(work, config)
    run_refused(work, f"'{name}' does not match", "On instance['arms']")


@pytest.mark.parametrize("field, bad", [("study", ".."), ("arms", ".x"), ("tasks", ".x")])
def test_names_are_checked_by_schema_and_check(field, bad):
    config = small_config()
    if field == "study":
        config["study"] = bad
    else:
        config[field][bad] = config[field].popitem()[1]
    with pytest.raises(WorkflowError, match=f"'{re.escape(bad)}' does not match"):
        qconfig.validate_schema(copy.deepcopy(config))
    with pytest.raises(qconfig.ConfigError, match=rf"^{field}: '{re.escape(bad)}' is not a usable"):
        qconfig.check(qconfig.typed(config), ROOT)


# --- 6. duplicate keys --------------------------------------------------------------------


def test_duplicate_arm_key_is_refused_before_any_job(tmp_path):
    work = finished_workdir(tmp_path)
    text = yaml.safe_dump(small_config(), sort_keys=False)
    lines = text.splitlines()
    arms = lines.index("arms:")
    lines[arms + 1 : arms + 1] = ["  fp4:", "    method: baseline"]
    (work / "config.yaml").write_text("\n".join(lines) + "\n")
    second = next(i for i, line in enumerate(lines) if line == "  fp4:" and i > arms + 1) + 1
    run_refused(
        work,
        f"Invalid config: config.yaml line {second}: duplicate key 'arms.fp4' "
        f"(first at line {arms + 2})",
    )


def test_strict_loader(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("a: &x {b: 1, c: 2}\nd:\n  <<: *x\n  b: 3\ne: [{f: 1, f: 2}]\n")
    with pytest.raises(qconfig.ConfigError, match=r"line 5: duplicate key 'e\.0\.f'"):
        qconfig.load_yaml(path)
    path.write_text("a: &x {b: 1, c: 2}\nd:\n  <<: *x\n  b: 3\n")  # a merge may be overridden
    assert qconfig.load_yaml(path) == {"a": {"b": 1, "c": 2}, "d": {"b": 3, "c": 2}}
    for shipped in ("config.yaml", "config/demo.yaml", "config/llama-3.2-1b-shapes.yaml"):
        assert qconfig.load_yaml(ROOT / shipped) == yaml.safe_load((ROOT / shipped).read_text())
