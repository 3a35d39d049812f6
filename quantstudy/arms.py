"""Typed arm specs parsed from the config; a wrong type or an unknown key fails naming the field.

One pydantic model per method (a union discriminated by `method`), each with its defaults on its
fields; schemas/config.schema.yaml states the same defaults for the generated reference (a test
holds the two equal). Importing this module does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import (
    BeforeValidator,
    Discriminator,
    Field,
    PrivateAttr,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from .config import Number, Spec, config_error

if TYPE_CHECKING:
    import torch

Dtype = Literal["bf16", "fp16", "fp32"]
Storage = Literal["uint8", "bf16", "fp16", "fp32"]
TORCH_NAMES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32", "uint8": "uint8"}


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a config dtype name (bf16, fp16, fp32, or the storage type uint8)."""
    import torch

    return getattr(torch, TORCH_NAMES[name])


def _as_tuple(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(value)
    raise PydanticCustomError("list_type", "Input should be a list of module names")


# Module names: a YAML list, held as a tuple (the spec is read-only and hashable).
Modules = Annotated[tuple[str, ...], BeforeValidator(_as_tuple)]


class Calibration(Spec):
    """Calibration text for GPTQ/AWQ: a local file (`path`) or a Hugging Face dataset."""

    path: str | None = None
    dataset: str = "wikitext"
    config_name: str | None = "wikitext-2-raw-v1"
    split: str = "train"
    text_field: str = "text"
    num_samples: Annotated[int, Field(ge=1)] = 256
    seq_len: Annotated[int, Field(ge=8)] = 2048
    seed: int = 0


class Arm(Spec):
    """Fields every arm has; its name is the key it has under `arms:` (set by parse_arm)."""

    method: str
    dtype: Dtype = "bf16"
    methods: ClassVar[tuple[str, ...]] = ()
    _name: str = PrivateAttr(default="")

    @property
    def name(self) -> str:
        return self._name

    @property
    def torch_dtype(self) -> torch.dtype:
        return torch_dtype(self.dtype)

    def params(self) -> dict[str, Any]:
        """The arm's parameters as written to quantize.json (name left out)."""
        return self.model_dump()

    @classmethod
    def _owner(cls, data: Any) -> str:
        return f" for method {data['method']!r}" if "method" in data else ""


class BaselineArm(Arm):
    method: Literal["baseline"]
    methods: ClassVar[tuple[str, ...]] = ("baseline",)

    @property
    def bits(self) -> int:
        return {"bf16": 16, "fp16": 16, "fp32": 32}[self.dtype]


class BnbInt8Arm(Arm):
    method: Literal["bnb-int8"]
    dtype: Dtype = "fp16"
    threshold: Annotated[Number, Field(ge=0)] = 6.0
    skip_modules: Modules = ("lm_head",)
    methods: ClassVar[tuple[str, ...]] = ("bnb-int8",)

    @property
    def bits(self) -> int:
        return 8


class Bnb4bitArm(Arm):
    method: Literal["bnb-4bit"]
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = False
    compute_dtype: Dtype = "bf16"
    quant_storage: Storage = "uint8"
    skip_modules: Modules = ("lm_head",)
    methods: ClassVar[tuple[str, ...]] = ("bnb-4bit",)

    @property
    def bits(self) -> int:
        return 4


class LlmCompressorArm(Arm):
    method: Literal["gptq", "awq"]
    bits: Literal[4, 8] = 4
    symmetric: bool = True
    group_size: Annotated[int, Field(ge=1)] = 128
    ignore: Modules = ("lm_head",)
    dampening_frac: Annotated[Number, Field(gt=0)] = 0.01
    calibration: Calibration = Calibration()
    methods: ClassVar[tuple[str, ...]] = ("gptq", "awq")

    @property
    def scheme_name(self) -> str:
        """llm-compressor's preset name for the same scheme (e.g. W4A16, W4A16_ASYM)."""
        return f"W{self.bits}A16" + ("" if self.symmetric else "_ASYM")


# llama.cpp's quantizer's types (llama-quantize's names) that need no importance matrix, and
# their nominal bits per weight (llama.cpp's own figures for its mixes; SmolLM2-sized rows that
# are not multiples of 256 fall back to legacy types: quantize.json records the real mix).
GGUF_BITS: dict[str, float] = {
    "F32": 32, "F16": 16, "BF16": 16, "Q8_0": 8.5, "Q6_K": 6.56, "Q5_K_M": 5.69, "Q5_K_S": 5.54,
    "Q5_1": 6.0, "Q5_0": 5.5, "Q4_K_M": 4.89, "Q4_K_S": 4.58, "Q4_1": 5.0, "Q4_0": 4.5,
    "IQ4_XS": 4.25, "IQ4_NL": 4.5, "Q3_K_L": 4.27, "Q3_K_M": 3.91, "Q3_K_S": 3.5, "IQ3_M": 3.66,
    "IQ3_S": 3.44, "IQ3_XS": 3.3, "Q2_K": 3.0,
}  # fmt: skip
GgufType = Literal[
    "F32", "F16", "BF16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q5_1", "Q5_0", "Q4_K_M", "Q4_K_S",
    "Q4_1", "Q4_0", "IQ4_XS", "IQ4_NL", "Q3_K_L", "Q3_K_M", "Q3_K_S", "IQ3_M", "IQ3_S", "IQ3_XS",
    "Q2_K",
]  # fmt: skip
# The unquantized GGUF types and the dtype the converter must write for them.
UNQUANTIZED_GGUF = {"F32": "fp32", "F16": "fp16", "BF16": "bf16"}


class GgufArm(Arm):
    """A GGUF file built by llama.cpp's converter (the source in `dtype`) and quantizer, run by
    llama.cpp. quant_type F16/BF16/F32 is an unquantized GGUF arm: beside the baseline it tells
    llama.cpp's runtime apart from its quantization."""

    method: Literal["gguf"]
    dtype: Dtype = "fp16"
    quant_type: GgufType = "Q8_0"
    calibration: Calibration | None = None
    methods: ClassVar[tuple[str, ...]] = ("gguf",)

    @model_validator(mode="after")
    def _unquantized_dtype(self) -> GgufArm:
        want = UNQUANTIZED_GGUF.get(self.quant_type)
        if want is not None and self.dtype != want:
            raise PydanticCustomError(
                "gguf_dtype",
                "an unquantized {quant_type} GGUF arm is converted in {want}, not {dtype}",
                {"at": ("dtype",), "quant_type": self.quant_type, "want": want,
                 "dtype": self.dtype},
            )  # fmt: skip
        return self

    @property
    def bits(self) -> float:
        return GGUF_BITS[self.quant_type]

    @property
    def quantized(self) -> bool:
        return self.quant_type not in UNQUANTIZED_GGUF


class Fp8Arm(Arm):
    """FP8 (E4M3) weights, one scale per output channel, by llm-compressor without calibration
    data: `fp8-dynamic` also quantizes the activations per token at run time (llm-compressor's
    FP8_DYNAMIC scheme), `fp8-weight` leaves them in `dtype`. Saved as compressed-tensors."""

    method: Literal["fp8-dynamic", "fp8-weight"]
    ignore: Modules = ("lm_head",)
    methods: ClassVar[tuple[str, ...]] = ("fp8-dynamic", "fp8-weight")

    @property
    def bits(self) -> int:
        return 8

    @property
    def scheme_name(self) -> str:
        """llm-compressor's preset for the scheme (FP8 weight-only has none: per-channel FP8)."""
        return "FP8_DYNAMIC" if self.method == "fp8-dynamic" else "FP8 weight-only (channel)"


class W8A8Arm(Arm):
    """INT8 weights and INT8 activations (dynamic, per token), by llm-compressor: SmoothQuant
    moves activation outliers into the weights, then GPTQ quantizes them per output channel
    (llm-compressor's W8A8 scheme). Saved as compressed-tensors."""

    method: Literal["w8a8"]
    smoothing_strength: Annotated[Number, Field(gt=0, le=1)] = 0.8
    ignore: Modules = ("lm_head",)
    dampening_frac: Annotated[Number, Field(gt=0)] = 0.01
    calibration: Calibration = Calibration()
    methods: ClassVar[tuple[str, ...]] = ("w8a8",)

    @property
    def bits(self) -> int:
        return 8

    @property
    def scheme_name(self) -> str:
        return "W8A8"


ARM_TYPES: dict[str, type[Arm]] = {
    m: cls
    for cls in (BaselineArm, BnbInt8Arm, Bnb4bitArm, LlmCompressorArm, Fp8Arm, W8A8Arm, GgufArm)
    for m in cls.methods
}
# Arms llm-compressor builds and saves as compressed-tensors.
COMPRESSED_TENSORS_ARMS = (LlmCompressorArm, Fp8Arm, W8A8Arm)

# Any arm: the model its `method` names.
AnyArm = Annotated[
    BaselineArm | BnbInt8Arm | Bnb4bitArm | LlmCompressorArm | Fp8Arm | W8A8Arm | GgufArm,
    Discriminator("method"),
]
_ANY_ARM: TypeAdapter[Arm] = TypeAdapter(AnyArm)


def parse_arm(name: str, spec: Any) -> Arm:
    """Build the typed spec of one arm; a wrong or unknown field raises ConfigError naming it."""
    try:
        arm = _ANY_ARM.validate_python(spec)
    except ValidationError as e:
        raise config_error(e, ("arms", name)) from None
    arm._name = name
    return arm


def parse_arms(config: dict[str, Any]) -> dict[str, Arm]:
    """Every arm of a config, in config order."""
    return {name: parse_arm(name, spec) for name, spec in config["arms"].items()}
