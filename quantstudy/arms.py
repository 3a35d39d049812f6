"""Typed arm specs parsed from the (schema-validated) config; unknown keys fail naming the field."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from .config import ConfigError

DTYPES: dict[str, torch.dtype] = {
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "fp32": torch.float32,
}
STORAGE: dict[str, torch.dtype] = {"uint8": torch.uint8, **DTYPES}


def _check_choice(arm: str, name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        allowed = ", ".join(map(str, choices))
        raise ConfigError(f"arms.{arm}.{name}: {value!r} is not one of {allowed}")


@dataclass(frozen=True)
class Calibration:
    """Calibration text for GPTQ/AWQ: a local file (`path`) or a Hugging Face dataset."""

    path: str | None = None
    dataset: str = "wikitext"
    config_name: str | None = "wikitext-2-raw-v1"
    split: str = "train"
    text_field: str = "text"
    num_samples: int = 256
    seq_len: int = 2048
    seed: int = 0


@dataclass(frozen=True)
class Arm:
    """Fields every arm has."""

    name: str
    method: str
    dtype: str = "bf16"
    methods: ClassVar[tuple[str, ...]] = ()

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def bits(self) -> int:
        return {"bf16": 16, "fp16": 16, "fp32": 32}[self.dtype]

    def params(self) -> dict[str, Any]:
        """The arm's parameters as written to quantize.json (name left out)."""
        d = dataclasses.asdict(self)
        d.pop("name")
        return d


@dataclass(frozen=True)
class BaselineArm(Arm):
    methods: ClassVar[tuple[str, ...]] = ("baseline",)


@dataclass(frozen=True)
class BnbInt8Arm(Arm):
    dtype: str = "fp16"
    threshold: float = 6.0
    skip_modules: tuple[str, ...] = ("lm_head",)
    methods: ClassVar[tuple[str, ...]] = ("bnb-int8",)

    @property
    def bits(self) -> int:
        return 8


@dataclass(frozen=True)
class Bnb4bitArm(Arm):
    quant_type: str = "nf4"
    double_quant: bool = False
    compute_dtype: str = "bf16"
    quant_storage: str = "uint8"
    skip_modules: tuple[str, ...] = ("lm_head",)
    methods: ClassVar[tuple[str, ...]] = ("bnb-4bit",)

    @property
    def bits(self) -> int:
        return 4


@dataclass(frozen=True)
class LlmCompressorArm(Arm):
    bits: int = 4  # type: ignore[assignment]  # a field here, a property elsewhere
    symmetric: bool = True
    group_size: int = 128
    ignore: tuple[str, ...] = ("lm_head",)
    dampening_frac: float = 0.01
    calibration: Calibration = field(default_factory=Calibration)
    methods: ClassVar[tuple[str, ...]] = ("gptq", "awq")

    @property
    def scheme_name(self) -> str:
        """llm-compressor's preset name for the same scheme (e.g. W4A16, W4A16_ASYM)."""
        return f"W{self.bits}A16" + ("" if self.symmetric else "_ASYM")


ARM_TYPES: dict[str, type[Arm]] = {
    m: cls for cls in (BaselineArm, BnbInt8Arm, Bnb4bitArm, LlmCompressorArm) for m in cls.methods
}


def parse_arm(name: str, spec: dict[str, Any]) -> Arm:
    """Build the typed spec of one arm; a wrong or unknown field raises ConfigError naming it."""
    if not isinstance(spec, dict) or "method" not in spec:
        raise ConfigError(f"arms.{name}.method: missing")
    _check_choice(name, "method", spec["method"], tuple(ARM_TYPES))
    cls = ARM_TYPES[spec["method"]]
    known = {f.name for f in dataclasses.fields(cls)} - {"name"}
    for key in spec:
        if key not in known:
            raise ConfigError(f"arms.{name}.{key}: unknown field for method {spec['method']!r}")
    values = dict(spec)
    for key in ("skip_modules", "ignore"):
        if key in values:
            values[key] = tuple(values[key])
    if "calibration" in values:
        calib_fields = {f.name for f in dataclasses.fields(Calibration)}
        for key in values["calibration"]:
            if key not in calib_fields:
                raise ConfigError(f"arms.{name}.calibration.{key}: unknown field")
        values["calibration"] = Calibration(**values["calibration"])
    arm = cls(name=name, **values)
    _check_choice(name, "dtype", arm.dtype, tuple(DTYPES))
    if isinstance(arm, Bnb4bitArm):
        _check_choice(name, "quant_type", arm.quant_type, ("nf4", "fp4"))
        _check_choice(name, "compute_dtype", arm.compute_dtype, tuple(DTYPES))
        _check_choice(name, "quant_storage", arm.quant_storage, tuple(STORAGE))
    if isinstance(arm, LlmCompressorArm):
        _check_choice(name, "bits", arm.bits, (4, 8))
    return arm


def parse_arms(config: dict[str, Any]) -> dict[str, Arm]:
    """Every arm of a config, in config order."""
    return {name: parse_arm(name, spec) for name, spec in config["arms"].items()}
