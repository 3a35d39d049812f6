"""GGUF arms: llama.cpp's converter writes the prepared source as an unquantized GGUF, its
quantizer makes the k-quant, and llama.cpp (llama-cpp-python) runs it.

An arm directory holds `model.gguf` (the file llama.cpp loads), the source's `config.json` and
tokenizer files (lm-eval tokenizes with them, as for every other arm, so all arms see the same
token ids), and quantize.json. Nothing here imports llama_cpp or torch at import time.

The converter is llama.cpp's own `convert_hf_to_gguf.py`, taken by `make install` from the
llama-cpp-python source distribution it builds (so converter and runtime are one llama.cpp
commit) into `<venv>/share/llama.cpp`; `LLAMA_CPP_DIR` points elsewhere.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .arms import UNQUANTIZED_GGUF, GgufArm

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

MODEL_FILE = "model.gguf"
CONVERTER = "convert_hf_to_gguf.py"
LLAMA_CPP_DIR_ENV = "LLAMA_CPP_DIR"
# The converter's --outtype for the arm's dtype: the unquantized file the quantizer starts from.
OUTTYPE = {"fp32": "f32", "fp16": "f16", "bf16": "bf16"}
# Files of the source that an arm directory keeps: lm-eval and the benchmark tokenize with them.
TOKENIZER_FILES = (
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "chat_template.jinja", "tokenizer.model", "vocab.json",
    "merges.txt",
)  # fmt: skip
# 2-D weights llama.cpp may store in a type other than the file's nominal one: its k-quant
# mixes give some tensors more bits (attn_v, ffn_down, output: Q6_K, Q5_K), and a row whose
# length is not a multiple of the 256-wide k-quant block falls back to a 32-wide legacy type
# (Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, Q2_K/Q3_K/IQ -> IQ4_NL or Q4_0...). Anything else
# (an F16/F32 matrix in a quantized file, or a type of another family) is not what was asked.
_LEGACY = {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "IQ4_NL"}
_K = {"Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"}
_IQ = {"IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ4_XS", "IQ4_NL"}


def allowed_types(quant_type: str) -> set[str]:
    """The ggml types a 2-D weight of a file quantized as `quant_type` may have."""
    if quant_type in UNQUANTIZED_GGUF:
        return {quant_type}
    if quant_type == "Q8_0":
        return {"Q8_0"}
    if quant_type in _LEGACY:  # the output/embedding matrix gets Q6_K (or its Q8_0 fallback)
        return {quant_type, "Q6_K", "Q8_0"}
    return _LEGACY | _K | _IQ


def converter_dir() -> Path:
    """Where llama.cpp's converter lives (LLAMA_CPP_DIR, else <venv>/share/llama.cpp)."""
    return Path(os.environ.get(LLAMA_CPP_DIR_ENV) or Path(sys.prefix) / "share" / "llama.cpp")


def missing_runtime() -> str | None:
    """Why GGUF arms cannot be built here (None when they can): the preflight says it before any
    job runs."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError as error:
        return f"llama-cpp-python is not installed ({error}); `make install` builds it"
    if not (converter_dir() / CONVERTER).is_file():
        return (f"llama.cpp's {CONVERTER} is not in {converter_dir()} (`make install` puts it "
                f"there; {LLAMA_CPP_DIR_ENV} names another folder)")  # fmt: skip
    return None


def threads() -> int:
    """Threads llama.cpp runs with: the job's allotment (Snakemake sets OMP_NUM_THREADS to a
    job's threads; torch reads it too), else the CPUs this process may use. More threads than
    the job was given stall: llama.cpp's OpenMP threads spin at every barrier, and beside
    another job on the same cores a 32-token prompt took seconds instead of milliseconds."""
    allotted = os.environ.get("OMP_NUM_THREADS", "")
    return (
        int(allotted) if allotted.isdigit() and int(allotted) > 0 else len(os.sched_getaffinity(0))
    )


def llama_cpp_build() -> dict[str, str]:
    """The CPU features the installed llama.cpp was built with and uses here."""
    import llama_cpp

    return {"llama_cpp_system_info": llama_cpp.llama_print_system_info().decode().strip()}


# --- build --------------------------------------------------------------------------------


def convert(source: Path | str, out_file: Path | str, dtype: str) -> float:
    """llama.cpp's converter: the prepared safetensors source -> an unquantized GGUF; seconds."""
    problem = missing_runtime()
    if problem:
        raise RuntimeError(problem)
    start = time.perf_counter()
    cmd = [sys.executable, str(converter_dir() / CONVERTER), str(source),
           "--outtype", OUTTYPE[dtype], "--outfile", str(out_file)]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True)
    for line in (run.stdout + run.stderr).splitlines():
        if "Writing:" not in line:  # progress bars
            log.info("convert: %s", line)
    if run.returncode != 0:
        tail = "\n".join(run.stderr.strip().splitlines()[-5:])
        raise RuntimeError(f"llama.cpp's converter failed on {source} (exit {run.returncode}):\n"
                           f"{tail}")  # fmt: skip
    return time.perf_counter() - start


def quantize_file(
    src: Path | str,
    dst: Path | str,
    quant_type: str,
    threads: int,
    imatrix: Mapping[str, np.ndarray] | None = None,
) -> float:
    """llama.cpp's quantizer (llama_model_quantize): `src` -> `dst` as `quant_type`, with an
    importance matrix (GGUF tensor name -> one weight per input column) when given; seconds."""
    import ctypes

    import llama_cpp
    import numpy as np

    params = llama_cpp.llama_model_quantize_default_params()
    name = "LLAMA_FTYPE_ALL_F32" if quant_type == "F32" else f"LLAMA_FTYPE_MOSTLY_{quant_type}"
    params.ftype = getattr(llama_cpp, name)
    params.nthread = threads
    if imatrix:
        # llama.cpp copies the entries; keep the arrays alive until it returns
        arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in imatrix.items()}
        entries = (llama_cpp.llama_model_imatrix_data * (len(arrays) + 1))()
        for entry, (key, values) in zip(entries, sorted(arrays.items())):
            entry.name = key.encode()
            entry.data = values.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            entry.size = values.size
        entries[len(arrays)].name = None  # the list ends with a null name
        params.imatrix = entries
    start = time.perf_counter()
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama.cpp's quantizer returned {rc} for {quant_type} on {src}")
    return time.perf_counter() - start


def importance_matrix(
    source: Path | str, texts: list[str], seq_len: int, unquantized: Path | str
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """An importance matrix from calibration text, as llama.cpp's llama-imatrix defines one: for
    each weight matrix, the mean over the text's tokens of the squared input activation of each
    input column. Computed with transformers on the source (fp32, CPU or GPU) and keyed by the
    GGUF tensor names of the unquantized file (the gguf package's name map of its architecture).
    Returns the matrix and what it was computed from."""
    import gguf as gguf_py
    import numpy as np
    import torch
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM, AutoTokenizer

    reader = GGUFReader(str(unquantized))
    arch_name = reader.fields["general.architecture"].contents()
    arch = {v: k for k, v in gguf_py.MODEL_ARCH_NAMES.items()}[arch_name]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(source)
    names = gguf_py.get_tensor_name_map(arch, model.config.num_hidden_layers)
    widths = {t.name: int(t.shape[0]) for t in reader.tensors if len(t.shape) >= 2}
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    hooks = []
    for module_name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        key = f"{names.get_name(module_name)}.weight"
        if key not in widths:  # a tied output head is token_embd: llama.cpp keeps no entry
            continue

        def hook(mod, args, key=key):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            sums[key] = sums.get(key, 0) + (x * x).sum(0)
            counts[key] = counts.get(key, 0) + x.shape[0]

        hooks.append(module.register_forward_pre_hook(hook))
    tokens = 0
    with torch.inference_mode():
        for text in texts:
            ids = tokenizer(text, truncation=True, max_length=seq_len, add_special_tokens=False)
            ids = torch.tensor([ids.input_ids], device=device)
            tokens += ids.shape[1]
            model(ids, use_cache=False)
    for h in hooks:
        h.remove()
    matrix = {k: (sums[k] / counts[k]).float().cpu().numpy() for k in sums}
    bad = [k for k, v in matrix.items() if v.size != widths[k] or not np.isfinite(v).all()]
    if bad:
        raise ValueError(f"importance matrix entries of the wrong size or not finite: {bad[:3]}")
    return matrix, {"samples": len(texts), "tokens": tokens, "tensors": len(matrix)}


# --- verification -------------------------------------------------------------------------


def tensor_table(path: Path | str) -> dict[str, dict[str, Any]]:
    """Every tensor of a GGUF file: its ggml type, shape (ggml order: row length first), element
    count and bytes, read with the gguf package."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    return {
        t.name: {
            "type": t.tensor_type.name,
            "shape": [int(n) for n in t.shape],
            "elements": int(t.n_elements),
            "bytes": int(t.n_bytes),
        }
        for t in reader.tensors
    }


def file_type(path: Path | str) -> str:
    """The file's `general.file_type`, as llama.cpp's ftype name (e.g. MOSTLY_Q4_K_M)."""
    import llama_cpp
    from gguf import GGUFReader

    field = GGUFReader(str(path)).fields.get("general.file_type")
    if field is None:
        return "unknown"
    value = int(field.contents())
    names = [n for n in dir(llama_cpp) if n.startswith("LLAMA_FTYPE_")]
    found = [n.removeprefix("LLAMA_FTYPE_") for n in names if getattr(llama_cpp, n) == value]
    return found[0] if found else str(value)


def _dequantized_rows(reader, name: str, rows: int) -> np.ndarray:
    import numpy as np
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    tensor = next(t for t in reader.tensors if t.name == name)
    data = tensor.data[:rows] if tensor.data.ndim > 1 else tensor.data
    qtype = GGMLQuantizationType(tensor.tensor_type)
    return np.asarray(dequantize(np.asarray(data), qtype), dtype=np.float64).reshape(
        -1, int(tensor.shape[0])
    )


def error_bound(ggml_type: str) -> float:
    """The largest relative RMS error (‖dequantized − original‖ / ‖original‖) a tensor of this
    type may show against the unquantized file: that of rounding to 2^b levels spread evenly over
    a block's range [−absmax, absmax] (step 2·absmax/2^b, RMS error step/√12), b the type's bits
    per weight rounded down, with absmax at its largest, √block times the block's RMS. Real
    quantizations stay well inside it (Q8_0 0.0067 against 0.0128 here, Q5_0 0.052 against
    0.102); a tensor of another model, or zeroed data, is about 1 or more."""
    import math

    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    if ggml_type in ("F32", "F16", "BF16"):
        return 1e-2  # bf16 holds 8 bits of mantissa
    block, size = GGML_QUANT_SIZES[GGMLQuantizationType[ggml_type]]
    bits = max(1, math.floor(8 * size / block))
    return min(1.0, 2 / (2**bits * math.sqrt(12)) * math.sqrt(block))


def verify_gguf(
    arm: GgufArm, path: Path | str, unquantized: Path | str, sample_rows: int = 64
) -> dict[str, Any]:
    """Check a quantized file is what the arm claims; raise AssertionError when it is not.

    - its `general.file_type` is the arm's quant_type;
    - every 2-D weight has a type of the quant type's family (`allowed_types`), and the
      unquantized file holds the same tensors with the same shapes;
    - every quantized tensor, dequantized with the gguf package (first `sample_rows` rows), is
      within `error_bound` of the unquantized file's (so the data are a quantization of the
      source, not another tensor or zeros).
    Returns the facts for quantize.json: tensors per type, fallbacks, bits per weight, the worst
    relative error per type.
    """
    import numpy as np
    from gguf import GGUFReader

    table, source = tensor_table(path), tensor_table(unquantized)
    assert set(table) == set(source), (
        f"{path}: tensors differ from the unquantized file: {sorted(set(table) ^ set(source))[:5]}"
    )
    want = "ALL_F32" if arm.quant_type == "F32" else f"MOSTLY_{arm.quant_type}"
    found_ftype = file_type(path)
    assert found_ftype == want, f"{path}: general.file_type is {found_ftype}, not {want}"
    allowed = allowed_types(arm.quant_type)
    matrices = {n: t for n, t in table.items() if len(t["shape"]) >= 2}
    wrong = {n: t["type"] for n, t in matrices.items() if t["type"] not in allowed}
    assert not wrong, (
        f"{path}: {len(wrong)} weight matrices are not of {arm.quant_type}'s types "
        f"{sorted(allowed)}: e.g. {next(iter(wrong.items()))}"
    )
    for name, t in matrices.items():
        assert t["shape"] == source[name]["shape"], f"{name}: shape {t['shape']} changed"
    reader, ref = GGUFReader(str(path)), GGUFReader(str(unquantized))
    worst: dict[str, float] = {}
    for name, t in matrices.items():
        got = _dequantized_rows(reader, name, sample_rows)
        exp = _dequantized_rows(ref, name, sample_rows)
        rel = float(np.linalg.norm(got - exp) / max(np.linalg.norm(exp), 1e-30))
        assert rel <= error_bound(t["type"]), (
            f"{path}: {name} ({t['type']}) is {rel:.3g} from the unquantized tensor (relative "
            f"RMS), more than the bound {error_bound(t['type']):.3g}"
        )
        worst[t["type"]] = max(worst.get(t["type"], 0.0), rel)
    counts: dict[str, int] = {}
    for t in matrices.values():
        counts[t["type"]] = counts.get(t["type"], 0) + 1
    weights = sum(t["elements"] for t in matrices.values())
    return {
        "file_type": found_ftype,
        "tensors": len(table),
        "weight_matrices": len(matrices),
        "types": dict(sorted(counts.items())),
        "vector_types": _vector_types(table, matrices),
        "bits_per_weight": 8 * sum(t["bytes"] for t in matrices.values()) / max(weights, 1),
        "max_relative_error": dict(sorted(worst.items())),
        "rows_checked_per_tensor": sample_rows,
    }


def _vector_types(table: dict[str, dict[str, Any]], matrices: dict[str, Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for name, t in table.items():
        if name not in matrices:
            counts[t["type"]] = counts.get(t["type"], 0) + 1
    return dict(sorted(counts.items()))


def gguf_bytes(path: Path | str) -> dict[str, int]:
    """What llama.cpp holds of the model: its tensors' bytes (it maps the file), in the shape of
    `memory.footprint` so every arm's memory reads alike."""
    total = sum(t["bytes"] for t in tensor_table(path).values())
    return {"parameters": total, "buffers": 0, "quant_state": 0, "total": total}


def decode_bytes(table: dict[str, dict[str, Any]]) -> tuple[int, dict[str, int]]:
    """Bytes one decode step reads from a GGUF's tensors, and what it does not read: the token
    embedding table when a separate output matrix exists (one row of it is read), as
    quantstudy.benchmark.weights counts a transformers model."""
    total = sum(t["bytes"] for t in table.values())
    embedding = table.get("token_embd.weight")
    untied = embedding["bytes"] if embedding is not None and "output.weight" in table else 0
    return total - untied, {"untied_input_embedding": untied}


# --- the arm -------------------------------------------------------------------------------


def copy_tokenizer(source: Path, out_dir: Path) -> None:
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, out_dir / name)


def build_gguf_arm(
    arm: GgufArm,
    source: Path,
    out_dir: Path,
    texts: list[str] | None = None,
    n_threads: int | None = None,
):
    """Convert, quantize (with an importance matrix from `texts`, the arm's calibration text,
    when given) and verify: returns (facts, seconds of converting, the matrix and quantizing)."""
    n_threads = n_threads or threads()
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / MODEL_FILE
    unquantized = out_dir / f"unquantized.{OUTTYPE[arm.dtype]}.gguf.tmp"
    try:
        seconds = convert(source, unquantized, arm.dtype)
        imatrix, imatrix_facts = None, None
        if texts is not None:
            start = time.perf_counter()
            imatrix, imatrix_facts = importance_matrix(
                source, texts, arm.calibration.seq_len, unquantized
            )
            seconds += time.perf_counter() - start
        # an unquantized quant type (F16, BF16, F32) is the converter's output rewritten
        seconds += quantize_file(unquantized, final, arm.quant_type, n_threads, imatrix)
        facts = verify_gguf(arm, final, unquantized) | {"imatrix": imatrix_facts}
    finally:
        with contextlib.suppress(FileNotFoundError):
            unquantized.unlink()
    copy_tokenizer(source, out_dir)
    return facts, seconds
