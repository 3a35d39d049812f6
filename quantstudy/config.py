"""Loading and checking a study config: the JSON schema first, then the checks a schema cannot say."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from .calibration import read_calibration_file

SCHEMA = Path(__file__).resolve().parent.parent / "schemas" / "config.schema.yaml"

# Study, arm and task names become folder and file names: no '/', and no leading '.' (an arm
# named '..' would make results/<study>/models/.. the arm's output, i.e. the whole study).
NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")

# A directory holds a tokenizer when it has one of these; otherwise transformers is asked.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt")


class ConfigError(ValueError):
    """A config value is wrong; the message starts with the field's dotted path."""


class StrictLoader(yaml.SafeLoader):
    """A YAML loader that refuses a key written twice in one mapping.

    PyYAML (and Snakemake's loader) keep the last of two equal keys: a second arm pasted under
    the name of the first silently replaces it. Keys merged in with `<<: *anchor` may be
    overridden; only keys written twice are refused.
    """

    def construct_document(self, node):
        _refuse_duplicate_keys(node, (), set())
        return super().construct_document(node)


def _refuse_duplicate_keys(node: yaml.Node, path: tuple[str, ...], seen: set[int]) -> None:
    if id(node) in seen:  # an alias: its node was checked where the anchor is
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict[tuple[str, str], yaml.Node] = {}
        for key, value in node.value:
            if key.tag == "tag:yaml.org,2002:merge" or not isinstance(key, yaml.ScalarNode):
                _refuse_duplicate_keys(value, path, seen)
                continue
            dotted = ".".join((*path, key.value))
            if (key.tag, key.value) in first:
                line = first[key.tag, key.value].start_mark.line + 1
                raise ConfigError(
                    f"{_shown(key.start_mark.name)} line {key.start_mark.line + 1}: duplicate key "
                    f"{dotted!r} (first at line {line}); YAML would keep only the last one"
                )
            first[key.tag, key.value] = key
            _refuse_duplicate_keys(value, (*path, key.value), seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _refuse_duplicate_keys(item, (*path, str(i)), seen)


def _shown(name: str) -> str:
    """A file name as the user would write it: relative to the working directory when inside."""
    try:
        return str(Path(name).resolve().relative_to(Path.cwd()))
    except ValueError:
        return name


def load_yaml(path: str | Path) -> Any:
    """Read a YAML (or JSON) file, refusing duplicate keys (ConfigError names file, line, key)."""
    with open(path, encoding="utf-8") as f:
        try:
            return yaml.load(f, Loader=StrictLoader)
        except yaml.YAMLError as e:
            raise ConfigError(f"{_shown(str(path))}: not valid YAML ({e})") from None


def check_config_files(paths: Iterable[str | Path]) -> None:
    """Re-read the config files Snakemake was given, refusing any key written twice."""
    for path in paths:
        load_yaml(path)


def normalise(config: dict[str, Any]) -> dict[str, Any]:
    """Turn `task:` entries written without settings (None) into empty mappings, in place."""
    tasks = config.get("tasks")
    if isinstance(tasks, dict):
        for name, spec in tasks.items():
            if spec is None:
                tasks[name] = {}
    return config


def validate_schema(config: dict[str, Any], schema: Path = SCHEMA) -> None:
    """Validate against the JSON schema and fill in its defaults (Snakemake's own validator)."""
    from snakemake.utils import validate

    validate(normalise(config), str(schema), set_default=True)


def baseline_arm(config: dict[str, Any]) -> str:
    """The arm every other arm is compared with: `baseline:` or the first arm of method baseline."""
    arms = config["arms"]
    name = config.get("baseline")
    if name is not None:
        if name not in arms:
            raise ConfigError(f"baseline: {name!r} is not one of the arms ({', '.join(arms)})")
        return name
    for arm, spec in arms.items():
        if spec["method"] == "baseline":
            return arm
    raise ConfigError(
        "baseline: no arm has method 'baseline'; add one or name the reference arm with `baseline:`"
    )


def resolve_path(path: str, python_package: str | None = None, root: Path | str = ".") -> Path:
    """A path from the config: inside an installed package when one is named, else under root."""
    if python_package:
        import importlib.util

        spec = importlib.util.find_spec(python_package)
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(f"python_package: {python_package!r} is not installed")
        return Path(list(spec.submodule_search_locations)[0]) / path
    p = Path(path)
    return p if p.is_absolute() else Path(root) / p


def check_name(field: str, name: Any) -> None:
    """A study, arm or task name is safe as a folder or file name."""
    if not isinstance(name, str) or not NAME.match(name):
        raise ConfigError(
            f"{field}: {name!r} is not a usable name: it becomes a folder or file name, so it may "
            "hold only letters, digits, '_', '.' and '-', and may not start with '.'"
        )


def check_tokenizer(field: str, path: Path, trust_remote_code: bool = False) -> None:
    """A directory holds a tokenizer: one of TOKENIZER_FILES, or one transformers can load."""
    if not path.is_dir() or any((path / name).is_file() for name in TOKENIZER_FILES):
        return
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        # transformers 5 can build a tokenizer with no vocabulary: that is no tokenizer either
        if len(tokenizer) <= len(tokenizer.all_special_tokens):
            raise ValueError("it loads a tokenizer with no vocabulary")
    except Exception as e:  # any failure means the same here: no tokenizer to be had
        reason = " ".join(f"{type(e).__name__}: {e}".split())
        raise ConfigError(
            f"{field}: {str(path)!r} holds no tokenizer (none of {', '.join(TOKENIZER_FILES)}, "
            f"and transformers could not load one: {reason})"
        ) from None


def check_calibration(arm: str, calib: dict[str, Any], root: Path | str) -> None:
    """A local calibration file holds at least `num_samples` usable texts."""
    path = resolve_path(calib["path"], None, root)
    field = f"arms.{arm}.calibration"
    if not path.is_file():
        raise ConfigError(f"{field}.path: {str(path)!r} is not a file")
    try:
        texts = read_calibration_file(path, calib["text_field"])
    except ValueError as e:  # bad JSON, a row without text_field, or not UTF-8
        raise ConfigError(f"{field}.path: {e}") from None
    unit = f"rows with {calib['text_field']!r}" if path.suffix == ".jsonl" else "non-empty lines"
    if not texts:
        raise ConfigError(f"{field}.path: {str(path)!r} holds no usable text (no {unit})")
    if len(texts) < calib["num_samples"]:
        raise ConfigError(
            f"{field}.num_samples: {calib['num_samples']} samples asked for, but {str(path)!r} "
            f"holds only {len(texts)} ({unit}); lower num_samples or add text"
        )


def check(config: dict[str, Any], root: Path | str = ".") -> None:
    """Cross-field checks that read only the config and small files (cheap, run in every process).

    Names are safe as paths, the baseline exists, every local file the study names is there, a
    local model and a tokenizer directory hold a tokenizer, and a local calibration file holds
    the samples asked for.
    """
    check_name("study", config["study"])
    for arm in config["arms"]:
        check_name("arms", arm)
    for task in config["tasks"]:
        check_name("tasks", task)
    baseline_arm(config)
    model = config["model"]
    if model["source"] in ("local", "gguf", "random-init"):
        path = resolve_path(model["path"], model.get("python_package"), root)
        if not path.exists():
            raise ConfigError(f"model.path: {str(path)!r} does not exist")
        if model["source"] == "gguf" and not path.name.endswith(".gguf"):
            raise ConfigError(f"model.path: {str(path)!r} is not a .gguf file")
        if model["source"] == "local":
            if not (path / "config.json").is_file():
                raise ConfigError(
                    f"model.path: {str(path)!r} is not a model folder (no config.json)"
                )
            check_tokenizer("model.path", path, model["trust_remote_code"])
    if model["source"] == "random-init" and model.get("tokenizer"):
        tok = model["tokenizer"]
        tpath = resolve_path(tok["path"], tok.get("python_package"), root)
        if not tpath.exists():
            raise ConfigError(f"model.tokenizer.path: {str(tpath)!r} does not exist")
        check_tokenizer("model.tokenizer.path", tpath)
    for arm, spec in config["arms"].items():
        if spec["method"] in ("gptq", "awq") and spec["group_size"] <= 0:
            raise ConfigError(f"arms.{arm}.group_size: {spec['group_size']} is not positive")
        calib = spec.get("calibration")
        if calib and calib.get("path"):
            check_calibration(arm, calib, root)
    include = resolve_path(config["evaluation"]["include_path"], None, root)
    if not include.is_dir():
        raise ConfigError(f"evaluation.include_path: {str(include)!r} is not a directory")


def load(path: str | Path, root: Path | str | None = None) -> dict[str, Any]:
    """Read, validate and check a config file, as the workflow does at its start (preflight too)."""
    from . import preflight

    path = Path(path)
    config = load_yaml(path)
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: not a mapping")
    config = copy.deepcopy(config)
    validate_schema(config)
    root = root if root is not None else Path.cwd()
    check(config, root)
    preflight.check(config, root)
    return config
