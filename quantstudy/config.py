"""Loading and checking a study config: the JSON schema first, then the checks a schema cannot say."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

SCHEMA = Path(__file__).resolve().parent.parent / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """A config value is wrong; the message starts with the field's dotted path."""


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


def check(config: dict[str, Any], root: Path | str = ".") -> None:
    """Cross-field checks: the baseline exists, and every local file the study names is there."""
    baseline_arm(config)
    model = config["model"]
    if model["source"] in ("local", "gguf", "random-init"):
        path = resolve_path(model["path"], model.get("python_package"), root)
        if not path.exists():
            raise ConfigError(f"model.path: {str(path)!r} does not exist")
        if model["source"] == "gguf" and not path.name.endswith(".gguf"):
            raise ConfigError(f"model.path: {str(path)!r} is not a .gguf file")
    if model["source"] == "random-init" and model.get("tokenizer"):
        tok = model["tokenizer"]
        tpath = resolve_path(tok["path"], tok.get("python_package"), root)
        if not tpath.exists():
            raise ConfigError(f"model.tokenizer.path: {str(tpath)!r} does not exist")
    for arm, spec in config["arms"].items():
        calib = spec.get("calibration")
        if calib and calib.get("path"):
            cpath = resolve_path(calib["path"], None, root)
            if not cpath.is_file():
                raise ConfigError(f"arms.{arm}.calibration.path: {str(cpath)!r} is not a file")
    include = resolve_path(config["evaluation"]["include_path"], None, root)
    if not include.is_dir():
        raise ConfigError(f"evaluation.include_path: {str(include)!r} is not a directory")


def load(path: str | Path, root: Path | str | None = None) -> dict[str, Any]:
    """Read, validate and check a config file, as the workflow does at its start."""
    path = Path(path)
    config = yaml.safe_load(path.read_text())
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: not a mapping")
    config = copy.deepcopy(config)
    validate_schema(config)
    check(config, root if root is not None else Path.cwd())
    return config
