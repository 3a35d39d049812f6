"""A GGUF arm run by llama.cpp (llama-cpp-python), in the shape lm-eval's HFLM drives.

`LlamaCppLM` is HFLM with its two model calls replaced: scoring runs each row through llama.cpp
and returns every position's logits; generation is greedy in llama.cpp. Everything else is
HFLM's own: the arm directory's transformers tokenizer (the source's), request ordering,
batching, context truncation, stop sequences. So a GGUF arm sees exactly the token ids, prompts
and decoding of every other arm, and its samples have the same schema.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from lm_eval.models.huggingface import HFLM

from .gguf import MODEL_FILE

# The largest context llama.cpp is given: its KV cache is allocated whole (about 1 GiB at 8B and
# 8192 tokens). A request longer than the context raises instead of being cut differently.
MAX_CONTEXT = 8192


class LlamaCppModel(torch.nn.Module):
    """An arm directory's `model.gguf` in llama.cpp, with the transformers config of its source.

    `score(ids)` returns the logits of every position of one sequence; `greedy(ids, n, stop)`
    generates up to n tokens. Runs on the CPU (llama-cpp-python is built without GPU offload).
    """

    runtime = "llama.cpp"

    def __init__(
        self,
        directory: Path | str,
        n_ctx: int | None = None,
        threads: int | None = None,
        logits_all: bool = True,
    ):
        """`logits_all=False` (the benchmark, as llama.cpp's own tools run) computes the logits of
        each batch's last position only; scoring needs them all."""
        super().__init__()
        from llama_cpp import Llama
        from transformers import AutoConfig, GenerationConfig

        directory = Path(directory)
        self.config = AutoConfig.from_pretrained(directory)
        self.name_or_path = str(directory)
        positions = getattr(self.config, "max_position_embeddings", MAX_CONTEXT)
        self.n_ctx = int(n_ctx or min(positions, MAX_CONTEXT))
        self.llm = Llama(
            model_path=str(directory / MODEL_FILE),
            n_ctx=self.n_ctx,
            n_batch=min(512, self.n_ctx),
            logits_all=logits_all,
            n_threads=threads or os.cpu_count(),
            n_gpu_layers=0,
            seed=0,
            verbose=False,
        )
        try:
            eos = GenerationConfig.from_pretrained(directory).eos_token_id
        except OSError:
            eos = self.config.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        self.logits_all = logits_all
        self.path = directory / MODEL_FILE

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def tie_weights(self) -> None:
        """Nothing to tie: the file holds the model as converted."""

    def _check_length(self, n: int) -> None:
        if n > self.n_ctx:
            raise ValueError(f"{n} tokens do not fit llama.cpp's context of {self.n_ctx}")

    def _last_logits(self):
        """The logits of the last position evaluated (a numpy view)."""
        import numpy as np

        if self.logits_all:
            return self.llm.scores[self.llm.n_tokens - 1]
        return np.ctypeslib.as_array(self.llm._ctx.get_logits_ith(-1), shape=(self.llm.n_vocab(),))

    def score(self, ids: list[int]) -> torch.Tensor:
        """Logits [len(ids), vocab] of one sequence, as float32."""
        if not self.logits_all:
            raise ValueError("scoring needs a LlamaCppModel with logits_all=True")
        self._check_length(len(ids))
        self.llm.reset()
        self.llm.eval(ids)
        return torch.from_numpy(self.llm.scores[: len(ids)].copy())

    def greedy(self, ids: list[int], max_new: int, stopped=None) -> list[int]:
        """Up to `max_new` greedy tokens after `ids`. With `stopped` (a function of the new
        tokens) it stops after an end-of-sequence token or when `stopped` says so; without, it
        makes all `max_new` (the benchmark's fixed length)."""
        self._check_length(len(ids) + max_new)
        self.llm.reset()
        self.llm.eval(ids)
        new: list[int] = []
        while len(new) < max_new:
            token = int(self._last_logits().argmax())
            new.append(token)
            if stopped is not None and (token in self.eos or stopped(new)):
                break
            if len(new) < max_new:
                self.llm.eval([token])
        return new

    def prefill(self, ids: list[int]) -> int:
        """One prompt evaluated from an empty cache; the greedy next token."""
        self._check_length(len(ids))
        self.llm.reset()
        self.llm.eval(ids)
        return int(self._last_logits().argmax())

    def forward(self, input_ids: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=torch.stack([self.score(r.tolist()) for r in input_ids]))


class LlamaCppLM(HFLM):
    """HFLM over a `LlamaCppModel`: the same tokenizer, batching and stop handling as every
    transformers arm; llama.cpp computes."""

    def __init__(self, pretrained: LlamaCppModel, **kwargs: Any):
        super().__init__(pretrained=pretrained, **kwargs)

    def _model_call(self, inps: torch.Tensor, attn_mask=None, labels=None) -> torch.Tensor:
        # HF's causal models run a right-padded batch unmasked: padding after a position does not
        # change its logits, so each row is scored whole, as there.
        return self.model(inps).logits

    def _model_generate(self, context, max_length: int, stop: list[str], **generation_kwargs):
        if generation_kwargs.get("do_sample") or generation_kwargs.get("temperature", 0.0) > 0:
            raise ValueError("GGUF arms decode greedily only (the task asks for sampling)")
        pad = self.tokenizer.pad_token_id
        masked = pad is not None and pad not in self.model.eos
        rows = []
        for row in context.tolist():
            # as transformers' generate infers the attention mask of a left-padded batch: pad
            # tokens are masked unless pad is also end-of-sequence, when nothing is
            ids = row
            if masked:
                start = next((i for i, t in enumerate(row) if t != pad), len(row))
                ids = row[start:]

            def stopped(new: list[int]) -> bool:
                text = self.tok_decode(new)
                return any(s in text for s in stop)

            new = self.model.greedy(ids, max_length - len(row), stopped)
            rows.append(row + new)
        width = max(len(r) for r in rows)
        filler = pad if pad is not None else 0
        return torch.tensor([r + [filler] * (width - len(r)) for r in rows], dtype=torch.long)
