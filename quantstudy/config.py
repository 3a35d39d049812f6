"""Loading and checking a study config: the JSON schema first, then the typed model
(quantstudy.study), then the checks neither can say."""

from __future__ import annotations

import copy
import difflib
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Self

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from .calibration import read_calibration_file

if TYPE_CHECKING:
    from .arms import Calibration
    from .study import Study

SCHEMA = Path(__file__).resolve().parent.parent / "schemas" / "config.schema.yaml"

# Study, arm and task names become folder and file names: no '/', and no leading '.' (an arm
# named '..' would make results/<study>/models/.. the arm's output, i.e. the whole study).
NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")

# A directory holds a tokenizer when it has one of these; otherwise transformers is asked.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt")


class ConfigError(ValueError):
    """A config value is wrong; the message starts with the field's dotted path."""


# --- the typed model's base: strict types, no unknown keys, errors that name the field ---------


def _number(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PydanticCustomError("number_type", "Input should be a number")
    return value


# A number as written: an int stays an int (records show it as the config says it), a float a
# float; a string or a bool is refused.
Number = Annotated[int | float, BeforeValidator(_number)]


class Spec(BaseModel):
    """A typed piece of the study config (llm-compressor's modifiers are the model): every field
    has its type and its default here, a string is not a number, and an unknown key is an error
    that names the field and the closest known one. Read-only once built."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    _unknown_what: ClassVar[str] = "field"  # "unknown field": the word for a key this model has

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            known = list(cls.model_fields)
            for key in data:
                if key not in known:
                    close = difflib.get_close_matches(str(key), known, n=1)
                    raise PydanticCustomError(
                        "unknown_field",
                        "unknown {what}{owner}{hint}",
                        {
                            "at": (key,),
                            "what": cls._unknown_what,
                            "owner": cls._owner(data),
                            "hint": f"; did you mean {close[0]!r}?" if close else "",
                        },
                    )
        return data

    @classmethod
    def _owner(cls, data: Mapping[str, Any]) -> str:
        """Words after "unknown field" that say whose field it is not (an arm's method)."""
        return ""

    @classmethod
    def parse(cls, data: Any, where: tuple[str, ...] = ()) -> Self:
        """The typed model of `data`, a plain config mapping found at path `where` (its keys)."""
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise config_error(e, where) from None


def config_error(error: ValidationError, where: tuple[str, ...] = ()) -> ConfigError:
    """A ConfigError that starts with the dotted path of each wrong field (`where` leads it)."""
    return ConfigError("; ".join(_message(e, where) for e in error.errors()))


def _message(e: Mapping[str, Any], prefix: tuple[str, ...]) -> str:
    """One pydantic error as `dotted.path: what is wrong (got …)`."""
    from .arms import ARM_TYPES

    loc = [*prefix, *map(str, e["loc"])]
    # a discriminated union puts the tag it chose into the location: arms.<name>.<method>.<field>
    if len(loc) > 2 and loc[0] == "arms" and loc[2] in ARM_TYPES:
        del loc[2]
    ctx = e["ctx"] if "ctx" in e else {}
    kind = e["type"]
    if kind == "union_tag_not_found":
        loc.append(ctx["discriminator"].strip("'"))
        text = "missing"
    elif kind == "union_tag_invalid":
        loc.append(ctx["discriminator"].strip("'"))
        text = f"{ctx['tag']!r} is not one of {_choices(ctx['expected_tags'])}"
    elif kind == "literal_error":
        text = f"{e['input']!r} is not one of {_choices(ctx['expected'])}"
    elif kind in ("missing", "extra_forbidden") or "at" in ctx:
        text = e["msg"]  # our own errors (ctx["at"]) say it all; their input may be a whole section
    else:
        got = repr(e["input"])
        text = f"{e['msg']} (got {got if len(got) <= 60 else got[:57] + '...'})"
    if "at" in ctx:
        loc += map(str, ctx["at"])
    return f"{'.'.join(loc)}: {text}" if loc else text


def _choices(expected: str) -> str:
    """pydantic's "'a', 'b' or 'c'" as "a, b, c"."""
    return ", ".join(c.strip().strip("'") for c in re.split(r",| or ", expected))


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


def check_calibration(arm: str, calib: Calibration, root: Path | str) -> None:
    """A local calibration file holds at least `num_samples` usable texts."""
    path = resolve_path(calib.path, None, root)
    field = f"arms.{arm}.calibration"
    if not path.is_file():
        raise ConfigError(f"{field}.path: {str(path)!r} is not a file")
    try:
        texts = read_calibration_file(path, calib.text_field)
    except ValueError as e:  # bad JSON, a row without text_field, or not UTF-8
        raise ConfigError(f"{field}.path: {e}") from None
    unit = f"rows with {calib.text_field!r}" if path.suffix == ".jsonl" else "non-empty lines"
    if not texts:
        raise ConfigError(f"{field}.path: {str(path)!r} holds no usable text (no {unit})")
    if len(texts) < calib.num_samples:
        raise ConfigError(
            f"{field}.num_samples: {calib.num_samples} samples asked for, but {str(path)!r} "
            f"holds only {len(texts)} ({unit}); lower num_samples or add text"
        )


def check_faithfulness(study: Study, root: Path | str) -> None:
    """A local held-out text for `faithfulness` exists, holds text and is no arm's calibration
    text (an arm calibrated on the text it is measured on would look better than it is)."""
    from .arms import LlmCompressorArm

    spec = study.faithfulness
    if not spec.enabled or spec.path is None:
        return
    path = resolve_path(spec.path, None, root)
    if not path.is_file():
        raise ConfigError(f"faithfulness.path: {str(path)!r} is not a file")
    try:
        texts = read_calibration_file(path, spec.text_field)
    except ValueError as e:
        raise ConfigError(f"faithfulness.path: {e}") from None
    if not texts:
        raise ConfigError(f"faithfulness.path: {str(path)!r} holds no text")
    for name, arm in study.arms.items():
        calib = arm.calibration.path if isinstance(arm, LlmCompressorArm) else None
        if calib is not None and resolve_path(calib, None, root).resolve() == path.resolve():
            raise ConfigError(
                f"faithfulness.path: {str(path)!r} is arms.{name}.calibration.path; held-out "
                "text must not be the calibration text"
            )


def typed(config: Mapping[str, Any]) -> Study:
    """The typed model of a schema-validated config; a wrong field raises ConfigError naming it.

    The workflow builds it once, right after the schema, so every field (benchmark settings
    included) is checked before any job.
    """
    from .study import Study

    return Study.parse(config)


def check(study: Study, root: Path | str = ".") -> None:
    """Cross-field checks that read only the config and small files (cheap, run in every process).

    Names are safe as paths, every local file the study names is there, a local model and a
    tokenizer directory hold a tokenizer, and a local calibration file holds the samples asked
    for. (Types, choices, bounds and the baseline are the typed model's: quantstudy.study.)
    """
    check_name("study", study.study)
    for arm in study.arms:
        check_name("arms", arm)
    for task in study.tasks:
        check_name("tasks", task)
    model = study.model
    if model.source in ("local", "gguf", "random-init"):
        path = resolve_path(model.path, model.python_package, root)
        if not path.exists():
            raise ConfigError(f"model.path: {str(path)!r} does not exist")
        if model.source == "gguf" and not path.name.endswith(".gguf"):
            raise ConfigError(f"model.path: {str(path)!r} is not a .gguf file")
        if model.source == "local":
            if not (path / "config.json").is_file():
                raise ConfigError(
                    f"model.path: {str(path)!r} is not a model folder (no config.json)"
                )
            check_tokenizer("model.path", path, model.trust_remote_code)
    if model.source == "random-init" and model.tokenizer is not None:
        tok = model.tokenizer
        tpath = resolve_path(tok.path, tok.python_package, root)
        if not tpath.exists():
            raise ConfigError(f"model.tokenizer.path: {str(tpath)!r} does not exist")
        check_tokenizer("model.tokenizer.path", tpath)

    for name, arm in study.arms.items():
        calibration = getattr(arm, "calibration", None)  # GPTQ, AWQ, W8A8; GGUF's imatrix
        if calibration is not None and calibration.path is not None:
            check_calibration(name, calibration, root)
    check_faithfulness(study, root)
    include = resolve_path(study.evaluation.include_path, None, root)
    if not include.is_dir():
        raise ConfigError(f"evaluation.include_path: {str(include)!r} is not a directory")


def load(path: str | Path, root: Path | str | None = None) -> dict[str, Any]:
    """Read, validate and check a config file, as the workflow does at its start (preflight too).

    Returns the plain config (schema defaults filled in), as Snakemake holds it.
    """
    from . import preflight

    path = Path(path)
    config = load_yaml(path)
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: not a mapping")
    config = copy.deepcopy(config)
    validate_schema(config)
    study = typed(config)
    root = root if root is not None else Path.cwd()
    check(study, root)
    preflight.check(study, root)
    return config
