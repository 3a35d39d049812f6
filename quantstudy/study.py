"""The typed model of a whole study config: every field's type and default, in one place.

The workflow builds it once, right after validating the config against
schemas/config.schema.yaml (`quantstudy.config.typed`), so a wrong field, benchmark settings
included, stops the workflow before any job. The schema states the same defaults for the
generated reference and fills them into the plain config that Snakemake hands to jobs as params;
tests/test_config.py holds the two equal. Jobs build the typed piece they need from their params
(`Task.parse(params.task)`, `parse_arm(name, params.arm)`).

Importing this module imports neither torch nor the benchmark.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator, Field, create_model, field_validator, model_validator
from pydantic_core import PydanticCustomError

from .arms import AnyArm, Dtype
from .config import Number, Spec

# --- model -------------------------------------------------------------------------------------


class Tokenizer(Spec):
    """A random-init model's tokenizer: a directory or a .gguf file."""

    path: str
    python_package: str | None = None


class Model(Spec):
    """Where the weights come from."""

    source: Literal["hub", "local", "gguf", "random-init"]
    repo_id: str | None = None
    revision: str = "main"
    path: str | None = None
    python_package: str | None = None
    tokenizer: Tokenizer | None = None
    dtype: Dtype = "bf16"
    seed: int = 0
    trust_remote_code: bool = False

    @model_validator(mode="after")
    def _located(self) -> Model:
        field = "repo_id" if self.source == "hub" else "path"
        if getattr(self, field) is None:
            raise PydanticCustomError(
                "missing",
                "required for source {source}",
                {"at": (field,), "source": repr(self.source)},
            )
        return self


# --- tasks and evaluation ----------------------------------------------------------------------


def _batch_size(value: Any) -> Any:
    if value == "auto" or (type(value) is int and value >= 1):
        return value
    raise PydanticCustomError("batch_size", "Input should be a whole number >= 1 or 'auto'")


BatchSize = Annotated[Annotated[int, Field(ge=1)] | Literal["auto"], BeforeValidator(_batch_size)]


class Task(Spec):
    """One lm-eval task; every arm runs it with the same settings."""

    limit: Annotated[int, Field(ge=1)] | None = None
    num_fewshot: Annotated[int, Field(ge=0)] | None = None
    batch_size: BatchSize = "auto"
    seed: int = 1234
    apply_chat_template: bool = False
    gen_kwargs: str | None = None


class Evaluation(Spec):
    """Settings shared by every evaluation job."""

    include_path: str = "tasks"
    max_batch_size: Annotated[int, Field(ge=1)] = 64
    max_length: Annotated[int, Field(ge=1)] | None = None


# --- analysis ----------------------------------------------------------------------------------


class Family(Spec):
    """A family of tasks (a workload such as structured extraction) and what an arm must show
    on each of its tasks to be recommended for a workload that has them."""

    tasks: Annotated[list[str], Field(min_length=1)]
    require: Literal["equivalent", "not-worse"] = "not-worse"


class Analysis(Spec):
    """The paired comparison of every arm with the baseline."""

    margin: Annotated[Number, Field(gt=0)] = 0.01
    alpha: Annotated[Number, Field(gt=0, lt=1)] = 0.05
    n_boot: Annotated[int, Field(ge=100)] = 2000
    seed: int = 0
    recommend: Literal["smallest-equivalent", "smallest-not-worse", "fastest-equivalent"] = (
        "smallest-equivalent"
    )
    primary_metrics: dict[str, str] = {}
    families: dict[str, Family] = {}


# --- benchmark ---------------------------------------------------------------------------------
# `benchmark.settings` overrides quantstudy.benchmark.DEFAULT_SETTINGS, the one home of the
# benchmark's defaults. Its typed model is made from those defaults, each setting typed by its
# default: a whole number where the default is one (a bool is not), a number (int or float)
# where it is a float, a bool, a string, a list of the default's element type, a section for a
# mapping; a default of "auto" also takes true or false (decided at run time, or forced), and a
# default of None (a count or size taken from elsewhere) takes None or a whole number.


def _auto_or_bool(value: Any) -> Any:
    if value == "auto" or isinstance(value, bool):
        return value
    raise PydanticCustomError("auto_or_bool", "Input should be 'auto', true or false")


AutoOrBool = Annotated[str | bool, BeforeValidator(_auto_or_bool)]


class Setting(Spec):
    """A section of the benchmark settings."""

    _unknown_what: ClassVar[str] = "setting"


def _setting_type(default: Any) -> Any:
    if isinstance(default, Mapping):
        return _settings_section("settings section", default)
    if isinstance(default, list):
        return list[_setting_type(default[0])] if default else list[Any]
    if default is None:
        return int | None
    if default == "auto":
        return AutoOrBool
    if isinstance(default, float):
        return Number
    return type(default)  # bool, int, str


def _settings_section(name: str, defaults: Mapping[str, Any]) -> type[Setting]:
    fields: dict[str, Any] = {}
    for key, default in defaults.items():
        kind = _setting_type(default)
        if isinstance(default, Mapping):
            fields[key] = (kind, Field(default_factory=kind))
        else:
            fields[key] = (kind, Field(default=default))
    return create_model(name, __base__=Setting, **fields)


@functools.cache
def settings_model() -> type[Setting]:
    """The typed model of the benchmark settings, made from DEFAULT_SETTINGS (on first use)."""
    from .benchmark import DEFAULT_SETTINGS

    return _settings_section("BenchmarkSettings", DEFAULT_SETTINGS)


def check_settings(settings: Mapping[str, Any]) -> None:
    """Benchmark setting overrides: known keys, typed as their defaults, values the benchmark
    takes (quantstudy.benchmark.resolve_settings); raises pydantic errors naming the setting."""
    from .benchmark import resolve_settings

    settings_model().model_validate(settings)
    try:
        resolve_settings(settings)
    except ValueError as e:  # "settings.decode.new_tokens must be >= 2 (…)"
        m = re.match(r"settings\.([\w.]+):? (.*)", str(e), re.S)
        at, text = (tuple(m[1].split(".")), m[2]) if m else ((), str(e))
        raise PydanticCustomError("benchmark_setting", "{text}", {"at": at, "text": text}) from None


class Benchmark(Spec):
    """The speed and memory benchmark."""

    enabled: bool = True
    settings: dict[str, Any] = {}

    @field_validator("settings")
    @classmethod
    def _checked(cls, settings: dict[str, Any]) -> dict[str, Any]:
        if settings:  # nothing to check otherwise (and the benchmark need not be imported)
            check_settings(settings)
        return settings


# --- agreement with the baseline (faithfulness) ------------------------------------------------


class Faithfulness(Spec):
    """Agreement with the baseline on held-out text (quantstudy.faithfulness): KL divergence,
    top-1 agreement and perplexity ratio per arm, every arm over the same token windows."""

    enabled: bool = False
    path: str | None = None
    dataset: str = "wikitext"
    config_name: str | None = "wikitext-2-raw-v1"
    split: str = "test"
    text_field: str = "text"
    num_tokens: Annotated[int, Field(ge=1)] = 65536
    context_length: Annotated[int, Field(ge=2)] = 2048
    stride: Annotated[int, Field(ge=1)] = 1024
    top_k: Annotated[int, Field(ge=1)] = 1024
    batch_size: Annotated[int, Field(ge=1)] = 1

    @model_validator(mode="after")
    def _windows(self) -> Faithfulness:
        if self.stride >= self.context_length:
            raise PydanticCustomError(
                "stride",
                "{stride} must be below context_length ({context}): a window scores its last "
                "`stride` tokens, each predicted from the tokens before it",
                {"at": ("stride",), "stride": self.stride, "context": self.context_length},
            )
        if self.num_tokens < self.stride:
            raise PydanticCustomError(
                "num_tokens",
                "{n} is fewer than one window scores (stride {stride})",
                {"at": ("num_tokens",), "n": self.num_tokens, "stride": self.stride},
            )
        return self


# --- the study ---------------------------------------------------------------------------------


class Study(Spec):
    """A whole study config. `baseline` is always set: the configured one, else the first arm
    whose method is baseline."""

    study: str
    baseline: str
    model: Model
    arms: Annotated[dict[str, AnyArm], Field(min_length=1)]
    tasks: Annotated[dict[str, Task], Field(min_length=1)]
    evaluation: Evaluation = Evaluation()
    analysis: Analysis = Analysis()
    benchmark: Benchmark = Benchmark()
    faithfulness: Faithfulness = Faithfulness()

    @model_validator(mode="before")
    @classmethod
    def _default_baseline(cls, data: Any) -> Any:
        if not isinstance(data, Mapping) or "baseline" in data or "arms" not in data:
            return data
        if not isinstance(data["arms"], Mapping):
            return data
        for arm, spec in data["arms"].items():
            if isinstance(spec, Mapping) and "method" in spec and spec["method"] == "baseline":
                return {**data, "baseline": arm}
        raise PydanticCustomError(
            "no_baseline",
            "no arm has method 'baseline'; add one or name the reference arm with `baseline:`",
            {"at": ("baseline",)},
        )

    @model_validator(mode="after")
    def _named_arms(self) -> Study:
        for name, arm in self.arms.items():
            arm._name = name
        if self.baseline not in self.arms:
            raise PydanticCustomError(
                "unknown_arm",
                "{name} is not one of the arms ({arms})",
                {"at": ("baseline",), "name": repr(self.baseline), "arms": ", ".join(self.arms)},
            )
        if self.arms[self.baseline].method == "gguf":
            raise PydanticCustomError(
                "gguf_baseline",
                "{name} is a gguf arm: the baseline is a transformers arm (an unquantized gguf arm "
                "beside it shows what llama.cpp's runtime changes)",
                {"at": ("baseline",), "name": repr(self.baseline)},
            )
        return self

    @model_validator(mode="after")
    def _family_tasks(self) -> Study:
        owner: dict[str, str] = {}
        for family, spec in self.analysis.families.items():
            at = ("analysis", "families", family, "tasks")
            for task in spec.tasks:
                if task not in self.tasks:
                    raise PydanticCustomError(
                        "unknown_task",
                        "{name} is not one of the tasks ({tasks})",
                        {"at": at, "name": repr(task), "tasks": ", ".join(self.tasks)},
                    )
                if task in owner:
                    raise PydanticCustomError(
                        "task_in_two_families",
                        "{name} is already in family {other}: a task has one requirement",
                        {"at": at, "name": repr(task), "other": repr(owner[task])},
                    )
                owner[task] = family
        return self
