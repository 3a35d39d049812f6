"""The two execution modes and how each runs a model: ``eager`` is ``model.generate`` with the
dynamic cache (prefill: one forward); ``static`` is an own greedy loop over transformers'
``StaticCache``, each forward ``torch.compile``d (CUDA graphs) where the settings say so.

A runner turns a scenario (prefill of a prompt batch, decode, generation) into a `Sample`: one
measurement call, given a timer."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch

from .timing import Memory, TimerFn, max_memory, per_second


@dataclass(frozen=True)
class ModeSpec:
    """How a mode runs: eager generate, or the own StaticCache loop (compiled or not)."""

    name: str
    compiled: bool = False
    compile_mode: str | None = None
    dynamic: bool | None = False
    compile_prefill: bool = False
    backend: str = "inductor"
    fuse: bool = False  # q/k/v and gate/up projections fused where the layers allow (fusion.py)
    try_compile_modes: tuple[str, ...] = ()  # more modes each model's step is built with

    @property
    def description(self) -> str:
        if self.name == "dense":
            static = replace(self, name="static").description
            return (
                "int4/FP8 layers decompressed to dense bf16 by transformers (kernels dense); "
                + static
            )
        if self.name == "eager":
            return "model.generate, dynamic cache, greedy; prefill = one forward with use_cache"
        if not self.compiled:
            return "own greedy loop over transformers StaticCache, not compiled"
        which = "every forward" if self.compile_prefill else "decode steps (prefill eager)"
        mode = repr(self.compile_mode)
        if len(self.compile_modes) > 1:
            modes = ", ".join(repr(m) for m in self.compile_modes)
            mode = f"the fastest decode step of {modes} per model"
        fused = "; q/k/v and gate/up projections fused where the layers allow" if self.fuse else ""
        return (
            "own greedy loop over transformers StaticCache, "
            f"{which} torch.compile(backend={self.backend!r}, mode={mode}, "
            f"fullgraph=True, dynamic={self.dynamic}){fused}"
        )

    @property
    def compile_modes(self) -> tuple[str, ...]:
        """The compile modes each model's step is built with (the first is the default)."""
        if not self.compiled or self.backend != "inductor":
            return ()
        return (self.compile_mode, *(m for m in self.try_compile_modes if m != self.compile_mode))


def mode_spec(name: str, settings: Mapping[str, Any], device: torch.device) -> ModeSpec:
    """The ModeSpec of a mode under the settings (`static.compile: auto` = on CUDA only)."""
    if name == "eager":
        return ModeSpec("eager")
    if name == "dense":  # the static mode, run on the arm as transformers decompresses it
        return replace(mode_spec("static", settings, device), name="dense")
    if name != "static":
        raise ValueError(f"unknown mode {name!r}")
    static = settings["static"]
    compiled = device.type == "cuda" if static["compile"] == "auto" else bool(static["compile"])
    inductor = compiled and static["backend"] == "inductor"
    return ModeSpec(
        "static",
        compiled=compiled,
        compile_mode=static["compile_mode"] if inductor else None,
        dynamic=static["dynamic"],
        compile_prefill=compiled and bool(static["compile_prefill"]),
        backend=static["backend"],
        fuse=compiled if static["fuse_projections"] == "auto" else bool(static["fuse_projections"]),
        try_compile_modes=tuple(static["try_compile_modes"]) if inductor else (),
    )


# A sample: one measurement call, given the timer; returns named values and the call's memory.
Sample = Callable[[TimerFn], tuple[dict[str, float], Memory | None]]


def _last_token_kwargs(model) -> dict[str, Any]:
    supports = getattr(model, "_supports_logits_to_keep", None)
    return {"logits_to_keep": 1} if supports is not None and supports() else {}


class EagerRunner:
    """Mode eager: plain forward for prefill, `model.generate` (dynamic cache, greedy) otherwise."""

    compiled = False

    def __init__(self, model):
        self.model = model
        self._kw = _last_token_kwargs(model)
        config = model.generation_config
        self._pad = config.pad_token_id if config.pad_token_id is not None else 0
        if isinstance(self._pad, list):
            self._pad = self._pad[0]

    def _generate(self, ids: torch.Tensor, new_tokens: int) -> Callable[[], None]:
        mask = torch.ones_like(ids)

        def run():
            out = self.model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                num_beams=1,
                cache_implementation="dynamic",
                pad_token_id=self._pad,
            )
            if out.shape[-1] != ids.shape[-1] + new_tokens:
                raise RuntimeError(
                    f"generate returned {out.shape[-1] - ids.shape[-1]} new tokens, not {new_tokens}"
                )

        return run

    def prefill(self, ids: torch.Tensor) -> Sample:
        def run():
            self.model(input_ids=ids, use_cache=True, **self._kw).logits[:, -1].argmax(-1)

        def sample(timer):
            ms, memory = timer(run, None)
            return {"ms": ms}, memory

        return sample

    def decode(self, ids: torch.Tensor, new_tokens: int) -> Sample:
        full, first = self._generate(ids, new_tokens), self._generate(ids, 1)

        def sample(timer):
            ms_full, mem_full = timer(full, None)
            ms_first, mem_first = timer(first, None)
            values = {
                "ms_per_token": (ms_full - ms_first) / (new_tokens - 1),
                "generate_ms": ms_full,
                "first_token_ms": ms_first,
            }
            return values, max_memory(mem_full, mem_first)

        return sample

    def generate(self, ids: torch.Tensor, new_tokens: int) -> Sample:
        run = self._generate(ids, new_tokens)
        tokens = ids.shape[0] * new_tokens

        def sample(timer):
            ms, memory = timer(run, None)
            return {"tokens_per_s": per_second(tokens, ms), "ms": ms}, memory

        return sample

    def release(self) -> None:
        pass


class StaticRunner:
    """Mode static: an own greedy loop over a StaticCache; each forward (prefill and decode step)
    goes through one function, compiled when the spec says so. The cache is reset before every
    run (transformers' StaticCache counts its own writes), compiled outputs are cloned and every
    call starts a new CUDA-graph step."""

    def __init__(self, model, spec: ModeSpec):
        self.model = model
        self.compiled = spec.compiled
        self._caches: dict[tuple[int, int], Any] = {}
        kw = _last_token_kwargs(model)

        def step(ids, cache):
            out = model(input_ids=ids, past_key_values=cache, use_cache=True, **kw)
            return out.logits[:, -1].argmax(-1, keepdim=True)

        self._eager_step = step
        if spec.compiled:
            _raise_recompile_limits()
            options = {"mode": spec.compile_mode} if spec.backend == "inductor" else {}
            step = torch.compile(
                step, backend=spec.backend, fullgraph=True, dynamic=spec.dynamic, **options
            )
        self._step = step
        self._compile_prefill = spec.compile_prefill

    def _call(self, ids: torch.Tensor, cache) -> torch.Tensor:
        """One forward: the prompt (prefill) or one token per row (decode step)."""
        if not self.compiled or (ids.shape[1] > 1 and not self._compile_prefill):
            return self._eager_step(ids, cache)
        torch.compiler.cudagraph_mark_step_begin()
        return self._step(ids, cache).clone()

    def _cache(self, batch: int, length: int, device: torch.device):
        """A StaticCache of `length` positions for `batch` rows, allocated by an eager forward
        (so its tensors are marked as static addresses outside any compiled region)."""
        key = (batch, length)
        if key not in self._caches:
            from transformers import StaticCache

            cache = StaticCache(config=self.model.config, max_cache_len=length)
            first = torch.zeros((batch, 1), dtype=torch.long, device=device)
            self.model(input_ids=first, past_key_values=cache, use_cache=True)
            cache.reset()
            self._caches[key] = cache
        return self._caches[key]

    def _loop(self, cache, first: torch.Tensor, steps: int) -> torch.Tensor:
        token = first
        for _ in range(steps):
            token = self._call(token, cache)
        return token

    def prefill(self, ids: torch.Tensor) -> Sample:
        cache = self._cache(ids.shape[0], ids.shape[1], ids.device)

        def sample(timer):
            ms, memory = timer(lambda: self._call(ids, cache), cache.reset)
            return {"ms": ms}, memory

        return sample

    def decode(self, ids: torch.Tensor, new_tokens: int) -> Sample:
        cache = self._cache(ids.shape[0], ids.shape[1] + new_tokens, ids.device)
        state: dict[str, torch.Tensor] = {}

        def setup():
            cache.reset()
            state["first"] = self._call(ids, cache)

        def sample(timer):
            ms, memory = timer(lambda: self._loop(cache, state["first"], new_tokens - 1), setup)
            return {"ms_per_token": ms / (new_tokens - 1), "decode_ms": ms}, memory

        return sample

    def generate(self, ids: torch.Tensor, new_tokens: int) -> Sample:
        cache = self._cache(ids.shape[0], ids.shape[1] + new_tokens, ids.device)
        tokens = ids.shape[0] * new_tokens

        def run():
            self._loop(cache, self._call(ids, cache), new_tokens - 1)

        def sample(timer):
            ms, memory = timer(run, cache.reset)
            return {"tokens_per_s": per_second(tokens, ms), "ms": ms}, memory

        return sample

    def tokens(self, ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
        """The greedy continuation (new tokens only), for checking the loop against generate."""
        cache = self._cache(ids.shape[0], ids.shape[1] + new_tokens, ids.device)
        cache.reset()
        out = [self._call(ids, cache)]
        for _ in range(new_tokens - 1):
            out.append(self._call(out[-1], cache))
        return torch.cat(out, dim=-1)

    def release(self) -> None:
        self._caches.clear()
        if self.compiled:
            torch._dynamo.reset()


def _raise_recompile_limits(limit: int = 64) -> None:
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(config, name) and getattr(config, name) < limit:
            setattr(config, name, limit)
    for name in ("accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(config, name) and getattr(config, name) < 4 * limit:
            setattr(config, name, 4 * limit)


LLAMACPP_DESCRIPTION = (
    "llama-cpp-python, one sequence, greedy; prefill = the prompt from an empty cache, last "
    "position's logits only"
)


class LlamaCppRunner:
    """A GGUF arm in llama.cpp (quantstudy.llamacpp), one sequence at a time: prefill evaluates
    the prompt from an empty cache; decode and generation are greedy steps, each one llama.cpp
    decode call (its own graph and CPU kernels: no mode applies)."""

    compiled = False

    def __init__(self, model):
        self.model = model

    def _rows(self, ids: torch.Tensor) -> list[int]:
        if ids.shape[0] != 1:
            raise ValueError("llama.cpp arms are measured at batch size 1 only")
        return ids[0].tolist()

    def _generate(self, ids: torch.Tensor, new_tokens: int) -> Callable[[], None]:
        row = self._rows(ids)

        def run():
            if len(self.model.greedy(row, new_tokens, reuse=False)) != new_tokens:
                raise RuntimeError(f"llama.cpp made fewer than {new_tokens} tokens")

        return run

    def prefill(self, ids: torch.Tensor) -> Sample:
        row = self._rows(ids)

        def sample(timer):
            ms, memory = timer(lambda: self.model.prefill(row), None)
            return {"ms": ms}, memory

        return sample

    decode = EagerRunner.decode
    generate = EagerRunner.generate

    def release(self) -> None:
        pass


def make_runner(model, spec: ModeSpec) -> EagerRunner | StaticRunner | LlamaCppRunner:
    """The runner of a mode for one model (a GGUF arm: llama.cpp's, whatever the mode)."""
    if getattr(model, "runtime", None) == "llama.cpp":
        return LlamaCppRunner(model)
    return EagerRunner(model) if spec.name == "eager" else StaticRunner(model, spec)
