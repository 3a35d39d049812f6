"""The static mode's step build on the CPU: fused q/k/v and gate/up projections
(quantstudy.benchmark.fusion) against the unfused model, the int4 layers' stacking, where fusing
stops applying, and the per-model choice of compile mode recorded in the benchmark JSON."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from quantstudy import int4, memory
from quantstudy.benchmark import fusion
from tests.test_int4 import packed_layer

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_llama(dtype=torch.float32, layers=2, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=300,
    )
    return LlamaForCausalLM(config).to(dtype).eval()


IDS = torch.randint(0, 300, (2, 9), generator=torch.Generator().manual_seed(1))


@torch.no_grad()
def test_fused_model_gives_the_unfused_logits_and_undo_restores_it():
    model = tiny_llama()
    want = model(input_ids=IDS).logits
    before = memory.footprint(model)["total"]
    attn = model.model.layers[0].self_attn
    q_before = attn.q_proj

    fused = fusion.fuse_checked(model, IDS)
    assert fused.record["fused"] == {"qkv": 2, "gate_up": 2} and fused.reason is None
    assert isinstance(attn.q_proj, fusion.FusedHead) and isinstance(attn.v_proj, fusion.FusedTail)
    assert attn.q_proj.stacked.weight.shape == (128 + 2 * 64, 128)  # 4 query heads, 2 kv heads
    # one copy of the weights: the original layers hold views of the stacked ones
    assert memory.footprint(model)["total"] == before
    stacked = attn.q_proj.stacked.weight
    assert q_before.weight.data_ptr() == stacked.data_ptr()
    assert torch.equal(model(input_ids=IDS).logits, want)

    fused.undo()
    assert attn.q_proj is q_before and type(attn.k_proj) is torch.nn.Linear
    assert torch.equal(model(input_ids=IDS).logits, want)
    assert memory.footprint(model)["total"] == before
    # each layer has its own storage again, not a view of the stacked weight
    for layer in (attn.q_proj, attn.k_proj, attn.v_proj, model.model.layers[1].mlp.up_proj):
        assert layer.weight.untyped_storage().nbytes() == layer.weight.nbytes
        assert isinstance(layer.weight, torch.nn.Parameter)


@torch.no_grad()
def test_a_fused_model_compiles_whole():
    model = tiny_llama()
    want = model(input_ids=IDS).logits
    done = fusion.fuse_projections(model)
    step = torch.compile(lambda ids: model(input_ids=ids).logits, backend="eager", fullgraph=True)
    assert torch.allclose(step(IDS), want, atol=1e-5)
    done.undo()


@pytest.mark.parametrize("kernel", ["tinygemm", "compiled"])
@pytest.mark.parametrize("symmetric", [True, False])
@torch.no_grad()
def test_stacked_int4_layers_compute_each_layer_s_rows(kernel, symmetric):
    layers = [
        int4.CONVERTERS[kernel](int4.unpack(packed_layer(n, 256, 32, symmetric, seed=i)), None)
        for i, n in enumerate((128, 64, 64))
    ]
    x = torch.randn(3, 256, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    want = torch.cat([layer(x) for layer in layers], dim=-1)
    stacked, share = int4.stack_layers(layers)
    assert stacked.out_features == 256
    assert torch.equal(stacked(x), want)
    share()  # the layers now read views of the stacked buffers, with the same results
    assert all(layer.packed.untyped_storage().nbytes() > layer.packed.nbytes for layer in layers)
    assert layers[1].packed.data_ptr() != stacked.packed.data_ptr()
    assert layers[1].packed.untyped_storage().data_ptr() == stacked.packed.data_ptr()
    assert torch.equal(torch.cat([layer(x) for layer in layers], dim=-1), want)


def test_int4_layers_that_cannot_be_stacked_say_why():
    sym = int4.to_compiled(int4.unpack(packed_layer(64, 256, 32, True)), None)
    asym = int4.to_compiled(int4.unpack(packed_layer(64, 256, 32, False)), None)
    other_group = int4.to_compiled(int4.unpack(packed_layer(64, 256, 64, True)), None)
    tiny = int4.to_tinygemm(int4.unpack(packed_layer(64, 256, 32, True)), None)
    actorder = int4.to_compiled(int4.unpack(packed_layer(64, 256, 32, True, actorder=True)), None)
    half = int4.to_compiled(int4.unpack(packed_layer(64, 256, 32, True)), None, torch.float16)
    for layers, message in [
        ([sym, half], "dtype or device"),
        ([sym, asym], "symmetric and asymmetric"),
        ([sym, other_group], "group size"),
        ([sym, tiny], "cannot stack"),
        ([sym, actorder], "activation order"),
    ]:
        with pytest.raises(ValueError, match=message):
            int4.stack_layers(layers)


class _KeyFirst(torch.nn.Module):
    """A model that calls its key projection before its query projection."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(50, 16)
        self.q_proj, self.k_proj, self.v_proj = (torch.nn.Linear(16, 16) for _ in range(3))

    def forward(self, input_ids):
        x = self.embed(input_ids)
        k = self.k_proj(x)
        return SimpleNamespace(logits=self.q_proj(x) * k + self.v_proj(x))


@torch.no_grad()
def test_a_model_that_calls_its_projections_out_of_order_stays_unfused():
    model = _KeyFirst()
    ids = torch.tensor([[1, 2, 3]])
    want = model(input_ids=ids).logits
    fused = fusion.fuse_checked(model, ids)
    assert fused.record["fused"] == {"qkv": 0, "gate_up": 0}
    assert "failed" in fused.reason and "called before" in fused.reason
    assert type(model.q_proj) is torch.nn.Linear and type(model.k_proj) is torch.nn.Linear
    assert torch.equal(model(input_ids=ids).logits, want)


@torch.no_grad()
def test_layers_of_other_kinds_are_left_with_the_reason():
    model = tiny_llama()
    for layer in model.model.layers:  # as bitsandbytes or compressed-tensors wrappers would
        layer.mlp.up_proj.forward = layer.mlp.up_proj.forward
    fused = fusion.fuse_checked(model, IDS)
    assert fused.record["fused"] == {"qkv": 2, "gate_up": 0}
    assert fused.record["not_fused"] == {"Linear layers are not stacked": 2}
    fused.undo()
    nothing = fusion.fuse_checked(torch.nn.Sequential(torch.nn.Linear(2, 2)), IDS)
    assert nothing.reason == "no q/k/v or gate/up projections"


@pytest.mark.parametrize("faster", ["first", "later"])
def test_the_fastest_compile_mode_is_kept_per_model_and_recorded(tmp_path, faster):
    """The static mode builds each model's step with every compile mode listed, keeps the one
    that decoded fastest, and records the modes' times and the fusion (inductor on the CPU).
    A scripted clock (every call really runs) makes the first mode tried the faster one, or the
    later one, so that neither "keep the first" nor "keep the last" passes both."""
    import itertools
    import json

    from quantstudy import benchmark as bm
    from quantstudy.benchmark import record as bench_record
    from quantstudy.provenance import dir_weight_files, sha256_files

    model_dir = tmp_path / "base"
    tiny_llama(layers=1).save_pretrained(model_dir)
    sha = sha256_files(dir_weight_files(model_dir), model_dir)
    (model_dir / "quantize.json").write_text(
        json.dumps({"arm": "base", "method": "baseline", "sha256": sha})
    )
    settings = {
        "warmup": 1,
        "repeats": 2,
        "prefill": {"modes": []},
        "decode": {"modes": ["static"], "prompt_length": 8, "new_tokens": 3},
        "throughput": {"modes": []},
        "largest_batch": {"modes": []},
        "bandwidth": {"bytes": 1 << 20, "warmup": 1, "repeats": 2},
        "static": {
            "compile": True,
            "compile_mode": "default",
            "try_compile_modes": ["max-autotune-no-cudagraphs"],
            "fuse_projections": True,
            "compile_prefill": False,
        },
    }
    ticks = itertools.count(1)

    def clock(run, setup=None):
        if setup is not None:
            setup()
        run()
        tick = next(ticks)
        return float(tick if faster == "first" else 1000 - tick), None

    rec = bm.run_benchmark(model_dir, model_dir, settings, "cpu", timer=clock)
    bench_record.validate(rec)
    static = rec["modes"]["static"]
    assert static["supported"], static.get("reason")
    build = static["builds"]["arm"]
    tried = build["tried"]
    assert list(tried) == ["default", "max-autotune-no-cudagraphs"]  # the order they were built
    assert all(t["error"] is None and t["ms_per_token"] > 0 for t in tried.values())
    fastest = "default" if faster == "first" else "max-autotune-no-cudagraphs"
    assert min(tried, key=lambda mode: tried[mode]["ms_per_token"]) == fastest
    assert build["compile_mode"] == static["compile_mode"] == fastest
    assert build["fusion"]["fused"] == {"qkv": 1, "gate_up": 1}
    assert build["fusion"]["max_rel_error"] < 1e-5
    assert "fastest decode step of 'default', 'max-autotune-no-cudagraphs'" in static["description"]
    assert "projections fused" in static["description"]
    # tables/benchmark.csv says how each model's step was built
    from quantstudy.aggregate import bench_rows, step_build

    row = next(r for r in bench_rows(rec) if r.get("scenario") == "decode")
    assert row["step_build"] == step_build(build)
    assert row["step_build"].startswith(f"{fastest} (fastest of default ")
    assert row["step_build"].endswith("ms/token); fused qkv x1, gate_up x1")
    assert step_build(None) is None
    assert step_build({"compile_mode": None, "tried": None, "fusion": {"fused": {"qkv": 0},
                       "reason": "Linear4bit layers are not stacked"}}) == (
        "not compiled; not fused: Linear4bit layers are not stacked"
    )  # fmt: skip


@torch.no_grad()
def test_a_stacked_layer_off_the_separate_ones_is_not_used(monkeypatch):
    """The layer check can fail: a stack whose rows come out in the wrong order is refused."""
    model = tiny_llama()
    want = model(input_ids=IDS).logits
    real = fusion.stack_linears

    def reversed_rows(layers):
        stacked, share = real(layers)
        stacked.weight.data = stacked.weight.data.flip(0)
        return stacked, share

    monkeypatch.setattr(fusion, "stack_linears", reversed_rows)
    fused = fusion.fuse_checked(model, IDS)
    assert fused.record["fused"] == {"qkv": 0, "gate_up": 0}
    assert fused.record["not_fused"] == {"stacked layer off the separate ones by more than 0.01": 4}
    assert torch.equal(model(input_ids=IDS).logits, want)


def test_compile_modes_the_settings_accept_are_torch_s():
    import torch._inductor

    from quantstudy.benchmark.settings import COMPILE_MODES

    assert set(COMPILE_MODES) <= set(torch._inductor.list_mode_options())
