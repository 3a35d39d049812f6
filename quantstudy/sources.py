"""Model sources: a hub repo, a local directory, a GGUF file or random-init from a config.

Every source ends as one safetensors directory with its tokenizer (`prepare_model`), which every
arm is built from.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch

from .arms import torch_dtype
from .config import resolve_path
from .provenance import code_version, dir_weight_files, sha256_files, write_json
from .study import Model

log = logging.getLogger(__name__)

# Files a study never needs from a hub repo: original (non-HF) checkpoints and other frameworks.
HUB_IGNORE = ["original/*", "*.pth", "*.gguf", "*.onnx", "*.msgpack", "*.h5", "*.tflite", "*.ot"]


def download_model(repo_id: str, revision: str, out_dir: Path | str) -> dict[str, Any]:
    """Fetch a hub snapshot into out_dir/hub (token from HF_TOKEN, never written anywhere)."""
    from huggingface_hub import snapshot_download

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    path = snapshot_download(
        repo_id,
        revision=revision,
        cache_dir=out_dir / "hub",
        ignore_patterns=HUB_IGNORE,
        token=os.environ.get("HF_TOKEN") or None,
    )
    # snapshot paths end in snapshots/<commit>: that is the exact revision that was fetched.
    record = {
        "repo_id": repo_id,
        "revision": revision,
        "commit": Path(path).name,
        "snapshot": str(Path(path).relative_to(out_dir)),
        "seconds": time.perf_counter() - start,
        "code_version": code_version(),
    }
    write_json(out_dir / "download.json", record)
    return record


def download_dataset(
    name: str, config_name: str | None, split: str, cache_dir: Path | str | None = None
) -> dict:
    """Pre-fetch a hub dataset split into the datasets cache, so GPU nodes can run offline."""
    import datasets

    ds = datasets.load_dataset(
        name, config_name, split=split, cache_dir=str(cache_dir) if cache_dir else None
    )
    return {
        "dataset": name,
        "config_name": config_name,
        "split": split,
        "rows": len(ds),
        "code_version": code_version(),
    }


def _load_gguf(path: Path, dtype: torch.dtype):
    """Load a GGUF file as a plain float model (transformers dequantizes it) and its tokenizer.

    A GGUF-loaded model is marked quantized and refuses save_pretrained: rebuild it from its
    config without quantization_config and copy the weights over.
    """
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    tokenizer = _load_tokenizer(path)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    return model, tokenizer


def byte_level_tokenizer():
    """A tokenizer that needs no files: one token per byte plus bos/eos/pad (259 tokens).

    For random-init models that name no tokenizer: their weights are random, so only the shapes
    and the token ids matter, and this runs anywhere without a download.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|pad|>"
    )


def _load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    if path.suffix == ".gguf":
        return _byte_level(AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name), path)
    return AutoTokenizer.from_pretrained(path)


# The decoder of a byte-level BPE tokenizer (GPT-2's, SmolLM2's).
BYTE_LEVEL_DECODER = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                      "use_regex": True}  # fmt: skip


def _byte_level(tokenizer, path: Path):
    """A GGUF's byte-level BPE tokenizer ("gpt2" in the file), saved as one.

    transformers rebuilds it with byte fallback and a sentencepiece decoder (ByteFallback, Fuse,
    "▁" -> " ") in front of the byte-level one. Saved so, llama.cpp's converter takes it for a
    Llama sentencepiece vocabulary (tokenizer model "llama", pre-tokenizer "default") and
    llama.cpp then crashes tokenizing with it. Byte-level pre-tokenization maps every byte to a
    token, so byte fallback never fires and encoding is unchanged; the decoder is the
    byte-level one alone. The test suite checks both on text with every kind of character.
    """
    import json

    from gguf import GGUFReader
    from tokenizers import Tokenizer

    field = GGUFReader(str(path)).fields.get("tokenizer.ggml.model")
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    byte_level = "ByteLevel" in json.dumps(spec.get("pre_tokenizer"))
    if field is None or field.contents() != "gpt2" or not byte_level:
        return tokenizer
    spec["model"]["byte_fallback"] = False
    spec["decoder"] = BYTE_LEVEL_DECODER
    tokenizer._tokenizer = Tokenizer.from_str(json.dumps(spec))
    return tokenizer


def load_source(model: Model, download_dir: Path | str | None, root: Path | str = "."):
    """The source model and tokenizer as the config describes them (weights in model.dtype)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    dtype = torch_dtype(model.dtype)
    trust = model.trust_remote_code
    source = model.source
    if source == "hub":
        record = json.loads((Path(download_dir) / "download.json").read_text())
        path = Path(download_dir) / record["snapshot"]
        weights = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust)
        return weights, tokenizer
    path = resolve_path(model.path, model.python_package, root)
    if source == "local":
        weights = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust)
        return weights, AutoTokenizer.from_pretrained(path, trust_remote_code=trust)
    if source == "gguf":
        return _load_gguf(path, dtype)
    if source == "random-init":
        config = AutoConfig.from_pretrained(path)
        torch.manual_seed(model.seed)
        # Drawing a billion random weights takes a minute on CPUs and a second on a GPU; the
        # weights differ between the two (other generators), which random-init studies accept.
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
            weights = AutoModelForCausalLM.from_config(config, dtype=dtype)
        weights = weights.to("cpu")
        tok = model.tokenizer
        if tok is None:
            tokenizer = byte_level_tokenizer()
        else:
            tokenizer = _load_tokenizer(resolve_path(tok.path, tok.python_package, root))
        if len(tokenizer) > config.vocab_size:
            raise ValueError(
                f"model.tokenizer: {len(tokenizer)} tokens do not fit the config's vocab_size "
                f"{config.vocab_size}"
            )
        return weights, tokenizer
    raise ValueError(f"model.source: unknown source {source!r}")


def prepare_model(
    spec: Model,
    out_dir: Path | str,
    download_dir: Path | str | None = None,
    root: Path | str = ".",
) -> dict[str, Any]:
    """Write the source as one safetensors directory with tokenizer and a source.json record
    (whose `source` is the config's `model:` entry as given)."""
    out_dir = Path(out_dir)
    start = time.perf_counter()
    model, tokenizer = load_source(spec, download_dir, root)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    record: dict[str, Any] = {
        "source": spec.model_dump(exclude_unset=True),
        "initialised_on": "cuda" if torch.cuda.is_available() else "cpu",
        "parameters": sum(p.numel() for p in model.parameters()),
        "seconds": time.perf_counter() - start,
        "sha256": sha256_files(dir_weight_files(out_dir), out_dir),
        "code_version": code_version(),
    }
    if spec.source == "hub":
        record["download"] = json.loads((Path(download_dir) / "download.json").read_text())
    write_json(out_dir / "source.json", record)
    log.info("prepared %s source: %d parameters", spec.source, record["parameters"])
    return record
