"""A GGUF arm run by llama.cpp (llama-cpp-python), in the shape lm-eval's HFLM drives.

`LlamaCppLM` is HFLM with its two model calls replaced: scoring runs each row through llama.cpp
and returns every position's logits; generation is greedy in llama.cpp. Everything else is
HFLM's own: the arm directory's transformers tokenizer (the source's), request ordering,
batching, context truncation, stop sequences. So a GGUF arm sees exactly the token ids, prompts
and decoding of every other arm, and its samples have the same schema.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from lm_eval.models.huggingface import HFLM

from .gguf import MODEL_FILE
from .gguf import threads as llama_threads

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
            # prompts too: llama-cpp-python's default is every CPU, whose OpenMP threads spin at
            # each barrier beside another job (a prompt then cost as much as decoding it)
            n_threads=threads or llama_threads(),
            n_threads_batch=threads or llama_threads(),
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

    def _evaluate(self, ids: list[int], reuse: bool = True) -> None:
        """Evaluate one sequence from position 0, reusing llama.cpp's cache of the longest prefix
        it shares with the sequence evaluated last (a multiple-choice item's choices share their
        context). At least the last token is evaluated again, so its logits are fresh; with
        logits_all the prefix's logits are the ones computed for the same tokens before."""
        self._check_length(len(ids))
        if not reuse:
            self.llm.reset()
        cached = self.llm.input_ids[: self.llm.n_tokens]
        shared, limit = 0, min(len(cached), len(ids) - 1)
        while shared < limit and cached[shared] == ids[shared]:
            shared += 1
        self.llm.n_tokens = shared  # eval() drops the cache from here on
        self.llm.eval(ids[shared:])

    def score(self, ids: list[int]) -> torch.Tensor:
        """Logits [len(ids), vocab] of one sequence, as float32."""
        if not self.logits_all:
            raise ValueError("scoring needs a LlamaCppModel with logits_all=True")
        self._evaluate(ids)
        return torch.from_numpy(self.llm.scores[: len(ids)].copy())

    def greedy(self, ids: list[int], max_new: int, stopped=None, reuse: bool = True) -> list[int]:
        """Up to `max_new` greedy tokens after `ids`. With `stopped` (a function of the new
        tokens) it stops after an end-of-sequence token or when `stopped` says so; without, it
        makes all `max_new` (the benchmark's fixed length). `reuse=False` starts from an empty
        cache (the benchmark times the prompt too)."""
        self._check_length(len(ids) + max_new)
        self._evaluate(ids, reuse)
        new: list[int] = []
        while len(new) < max_new:
            token = int(self._last_logits().argmax())
            new.append(token)
            if stopped is not None and (token in self.eos or stopped(new)):
                break
            if len(new) < max_new:
                self.llm.eval([token])
        return new

    def greedy_batch(self, rows: list[list[int]], max_new: int, stopped) -> list[list[int]]:
        """Greedy continuations of several prompts at once, one llama.cpp sequence each, in a
        context of their own (a unified KV cache sized to the batch): each step decodes one
        token of every unfinished row in one call, so the weights are read once per step, as
        transformers' batched generate reads them. A row ends after an end-of-sequence token,
        when `stopped(new_tokens)` says so, or at `max_new` tokens."""
        import llama_cpp
        import numpy as np
        from llama_cpp._internals import LlamaBatch, LlamaContext

        need = sum(len(r) + max_new for r in rows)
        per_call = min(512, need)
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = -(-need // 256) * 256
        params.n_batch = params.n_ubatch = per_call
        params.n_seq_max = len(rows)
        params.kv_unified = True
        params.n_threads = params.n_threads_batch = self.llm.n_threads
        params.no_perf = True
        ctx = LlamaContext(model=self.llm._model, params=params, verbose=False)
        batch = LlamaBatch(n_tokens=per_call, embd=0, n_seq_max=len(rows), verbose=False)
        n_vocab = self.llm.n_vocab()

        def decode(entries: list[tuple[int, int, int, bool]]) -> dict[int, np.ndarray]:
            """Decode (row, position, token, wants logits) entries; the logits by row."""
            out = {}
            for start in range(0, len(entries), per_call):
                chunk = entries[start : start + per_call]
                b = batch.batch
                b.n_tokens = len(chunk)
                for j, (row, pos, token, wants) in enumerate(chunk):
                    b.token[j], b.pos[j], b.n_seq_id[j] = token, pos, 1
                    b.seq_id[j][0], b.logits[j] = row, wants
                ctx.decode(batch)
                for j, (row, _, _, wants) in enumerate(chunk):
                    if wants:
                        logits = ctx.get_logits_ith(j)
                        out[row] = np.ctypeslib.as_array(logits, shape=(n_vocab,)).copy()
            return out

        try:
            logits = decode([(i, p, t, p == len(r) - 1) for i, r in enumerate(rows)
                             for p, t in enumerate(r)])  # fmt: skip
            new: list[list[int]] = [[] for _ in rows]
            active = set(range(len(rows)))
            while active:
                step = []
                for i in sorted(active):
                    token = int(logits[i].argmax())
                    new[i].append(token)
                    if token in self.eos or stopped(new[i]) or len(new[i]) >= max_new:
                        active.discard(i)
                    else:
                        step.append((i, len(rows[i]) + len(new[i]) - 1, token, True))
                logits = decode(step) if step else {}
        finally:
            batch.close()
            ctx.close()
        return new

    def prefill(self, ids: list[int]) -> int:
        """One prompt evaluated from an empty cache; the greedy next token."""
        self._check_length(len(ids))
        self.llm.reset()
        self.llm.eval(ids)
        return int(self._last_logits().argmax())

    def forward(
        self, input_ids: torch.Tensor, use_cache: bool | None = None, logits_to_keep: int = 0
    ) -> SimpleNamespace:
        """transformers' call: logits [batch, positions, vocab] of every row (the last
        `logits_to_keep` positions when it is set); llama.cpp keeps no cache between calls."""
        logits = torch.stack([self.score(r.tolist()) for r in input_ids])
        return SimpleNamespace(logits=logits[:, -logits_to_keep:] if logits_to_keep else logits)


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
        prompts = []
        for row in context.tolist():
            # as transformers' generate infers the attention mask of a left-padded batch: pad
            # tokens are masked unless pad is also end-of-sequence, when nothing is
            start = next((i for i, t in enumerate(row) if t != pad), len(row)) if masked else 0
            prompts.append(row[start:])

        def stopped(new: list[int]) -> bool:
            text = self.tok_decode(new)
            return any(s in text for s in stop)

        width = context.shape[1]
        news = self.model.greedy_batch(prompts, max_length - width, stopped)
        rows = [row + new for row, new in zip(context.tolist(), news)]
        width = max(len(r) for r in rows)
        filler = pad if pad is not None else 0
        return torch.tensor([r + [filler] * (width - len(r)) for r in rows], dtype=torch.long)
