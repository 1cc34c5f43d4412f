"""The Triton block-causal attention kernel against PyTorch SDPA (TRITON_INTERPRET=1 on a CPU)."""
import itertools
import os

import pytest
import torch

from helpers import report
from kernels.attention import block_attention_triton
from kernels.reference import block_attention_reference

if os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
    pytest.skip("Triton kernels need a GPU or TRITON_INTERPRET=1 (tests/conftest.py sets it on a CPU)",
                allow_module_level=True)

PAIRS = list(itertools.product([1, 7, 64, 196], [0, 1, 100, 1000]))  # (Lq, cache_len)


def _inputs(b, hq, hkv, n_q, d, cache_lens, capacity, n_local, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g).to(dtype)  # noqa: E731
    return (r(b, hq, n_q, d), r(b, hkv, capacity, d), r(b, hkv, capacity, d), torch.tensor(cache_lens),
            r(b, hkv, n_local, d), r(b, hkv, n_local, d))


@pytest.mark.parametrize("i", range(len(PAIRS)))
def test_kernel_matches_sdpa_over_the_grid(i):
    """Every (Lq, cache_len) pair; heads (4,4)/(8,2), D 64/128 and causal rows on/off rotate so each
    combination of those three appears twice. Capacities are not powers of two and exceed the length."""
    n_q, cache_len = PAIRS[i]
    (hq, hkv), d, causal = [(4, 4), (8, 2)][i % 2], [64, 128][(i // 2) % 2], (i // 4) % 2 == 1
    tail = min(2, n_q) if causal else 0
    args = _inputs(1, hq, hkv, n_q, d, [cache_len], cache_len + 37, n_q + 3, seed=i)
    got = block_attention_triton(*args, causal_tail=tail)
    want = block_attention_reference(*args, causal_tail=tail)
    err = (got - want).abs().max().item()
    report(f"Lq={n_q} cache_len={cache_len} heads={hq}/{hkv} D={d} causal_tail={tail}: max abs {err:.2e}")
    assert got.shape == want.shape and err < 2e-5


def test_batch_rows_with_different_lengths_and_gpu_tiles():
    """Two sessions at different cache lengths; the GPU tile sizes, so many splits and tiles are combined."""
    args = _inputs(2, 8, 2, 7, 64, [0, 950], 1000, 7)
    want = block_attention_reference(*args, causal_tail=2)
    for tiles in [None, (16, 16, 264), (64, 32, 264), (64, 64, 264, 8, 3)]:  # the last: kernels/tiling.py's
        got = block_attention_triton(*args, causal_tail=2, tiles=tiles)
        assert (got - want).abs().max() < 2e-5, tiles


def test_strided_queries_give_a_contiguous_output():
    """q as the model makes it: a transposed view of [B, L, H, D]."""
    q, ck, cv, cl, lk, lv = _inputs(1, 8, 2, 7, 64, [40], 64, 7)
    q_strided = q.transpose(1, 2).contiguous().transpose(1, 2)
    got = block_attention_triton(q_strided, ck, cv, cl, lk, lv)
    assert got.is_contiguous() and (got - block_attention_reference(q, ck, cv, cl, lk, lv)).abs().max() < 2e-5


def test_fake_kernel_output_has_the_real_strides():
    """The op's fake (meta) kernel, what export and AOTInductor plan buffers with, gives the real op's
    contiguous output for a transposed q; a fake that copies q's strides (`empty_like`) is caught."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    import kernels.ops as ops

    q, ck, cv, cl, lk, lv = _inputs(1, 8, 2, 7, 64, [40], 64, 7)
    q_strided = q.transpose(1, 2).contiguous().transpose(1, 2)
    real = torch.ops.streamer.block_attention(q_strided, ck, cv, cl, lk, lv, None, None, 0)

    def fake_strides(fn):
        with FakeTensorMode() as mode:
            args = [mode.from_tensor(t) for t in (q_strided, ck, cv, cl, lk, lv)]
            return tuple(fn(*args, None, None, 0).stride())

    assert not q_strided.is_contiguous() and real.is_contiguous()
    through_op = fake_strides(torch.ops.streamer.block_attention)  # dispatches to the registered fake
    assert through_op == fake_strides(ops._block_attention_fake) == real.stride()
    planted = fake_strides(lambda q, *rest: torch.empty_like(q))
    assert planted != real.stride()  # the bug the test is for
    report(f"fake output strides {through_op} = real {real.stride()}; empty_like(q) would give {planted}")


def test_the_gpu_launch_is_the_one_the_plugins_compile(monkeypatch):
    """Off the interpreter the torch op launches exactly `launch_geometry` (tiles, warps, stages, split), the
    geometry the ONNX nodes carry and the TensorRT AOT plugins compile; the interpreter keeps its own."""
    import kernels.attention as attention
    from kernels.aot import launch_geometry
    from kernels.tiling import GPU_TILES

    for (group, d, fp8), tiles in GPU_TILES.items():
        q = torch.empty(1, 4 * group, 196, d)
        cache = torch.empty(1, 4, 32256, d, dtype=torch.float8_e4m3fn if fp8 else torch.float32)
        monkeypatch.setattr(attention, "interpreted", lambda: False)
        g = attention.plan_launch(q, cache)
        assert g == launch_geometry(1, 4 * group, 4, 196, d, 32256, fp8=fp8)
        assert (g.block_n, g.num_warps, g.num_stages) == (tiles.block_n, tiles.num_warps, tiles.num_stages)
        monkeypatch.setattr(attention, "interpreted", lambda: True)
        assert attention.plan_launch(q, cache).block_n == 256


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 3e-3)])
def test_half_precision(dtype, tol):
    args = _inputs(1, 8, 2, 64, 128, [700], 1000, 64, dtype=dtype)
    want = block_attention_reference(*[a.float() if a.is_floating_point() else a for a in args])
    assert (block_attention_triton(*args).float() - want).abs().max() < tol


def test_bfloat16_in_the_interpreter_is_not_checked():
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("Triton's CPU interpreter computes tl.dot wrongly on bfloat16 (triton 3.9); bf16 is checked "
                    "on a GPU by `python bench/attention.py --check`")
    args = _inputs(1, 8, 2, 64, 128, [700], 1000, 64, dtype=torch.bfloat16)
    want = block_attention_reference(*[a.float() if a.is_floating_point() else a for a in args])
    assert (block_attention_triton(*[a.cuda() for a in args]).float().cpu() - want).abs().max() < 3e-2


def test_fp8_cache_with_per_head_scales():
    q, ck, cv, cl, lk, lv = _inputs(1, 8, 2, 7, 64, [300], 333, 7)
    ks, vs = ck.abs().amax(dim=(0, 2, 3)) / 448, cv.abs().amax(dim=(0, 2, 3)) / 448
    ck8 = (ck / ks[None, :, None, None]).to(torch.float8_e4m3fn)
    cv8 = (cv / vs[None, :, None, None]).to(torch.float8_e4m3fn)
    got = block_attention_triton(q, ck8, cv8, cl, lk, lv, ks, vs)
    assert (got - block_attention_reference(q, ck8, cv8, cl, lk, lv, ks, vs)).abs().max() < 2e-5
    quant_err = (got - block_attention_reference(q, ck, cv, cl, lk, lv)).abs().max().item()
    report(f"FP8 E4M3 cache against the float32 cache: max abs {quant_err:.3f}")
    assert quant_err < 0.1


def test_custom_op_checks_its_inputs():
    import kernels.ops  # noqa: F401

    q, ck, cv, cl, lk, lv = _inputs(1, 6, 4, 7, 64, [10], 20, 7)
    with pytest.raises(ValueError, match="Hq=6 must be a multiple of Hkv=4"):
        torch.ops.streamer.block_attention(q, ck, cv, cl, lk, lv, None, None, 0)
    q, ck, cv, cl, lk, lv = _inputs(1, 4, 2, 7, 48, [10], 20, 7)
    with pytest.raises(ValueError, match=r"head dim must be one of \(16, 32, 64, 128\), got 48"):
        torch.ops.streamer.block_attention(q, ck, cv, cl, lk, lv, None, None, 0)
    q, ck, cv, cl, lk, lv = _inputs(1, 4, 2, 7, 64, [10], 20, 7)
    with pytest.raises(ValueError, match=r"FP8 cache needs k_scale and v_scale of shape \(2,\)"):
        torch.ops.streamer.block_attention(q, ck.to(torch.float8_e4m3fn), cv.to(torch.float8_e4m3fn), cl, lk, lv,
                                           None, None, 0)
    got = torch.ops.streamer.block_attention(q, ck, cv, cl, lk, lv, None, None, 0)
    assert (got - block_attention_reference(q, ck, cv, cl, lk, lv)).abs().max() < 2e-5


def test_model_steps_give_the_same_outputs_with_the_kernel(tiny):
    """thinker_step and flow_step with attn_impl="triton" against "torch", over several units."""
    from helpers import random_units, unit
    from model_src.kv_cache import append_unit, init_cache
    from model_src.system import build_system

    model = build_system(tiny, seed=3).model
    inputs = random_units(tiny, 2, 3)
    noise_a = torch.randn(2, tiny.audio_frames_per_unit, tiny.audio_z)
    noise_v = torch.randn(2, tiny.video_z, tiny.latent_height, tiny.latent_width)
    runs = {}
    for impl in ("torch", "triton"):
        model.backbone.set_attn_impl(impl)
        cache, outs = init_cache(tiny, 2), []
        with torch.no_grad():
            for k in range(3):
                idx = torch.full((2,), k)
                out = model.thinker_step(*unit(inputs, k), *cache, idx)
                append_unit(tiny, cache, out.k_delta, out.v_delta, k)
                outs.append((out.text_logits, out.hidden, *model.flow_step(noise_a, noise_v, torch.full((2,), 0.5),
                                                                           *cache, idx)))
        runs[impl] = outs
    model.backbone.set_attn_impl("torch")
    for a, b in zip(runs["torch"], runs["triton"]):
        for x, y in zip(a, b):
            assert (x - y).abs().max() < 1e-5
    with pytest.raises(ValueError, match="attention impl must be one of"):
        model.backbone.set_attn_impl("cuda")


def test_onnx_export_of_a_layer_holds_the_custom_node(tiny, tmp_path):
    import onnx

    from kernels.aot import launch_geometry
    from kernels.onnx import COMBINE, CUSTOM_TRANSLATION, DOMAIN, PARTIAL
    from model_src.backbone import KeyContext
    from model_src.kv_cache import init_cache
    from model_src.system import build_system

    backbone = build_system(tiny).model.backbone
    backbone.set_attn_impl("triton")

    class Layer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer, self.backbone = backbone.layers[0], backbone

        def forward(self, x, positions, cache_k, cache_v, cache_len):
            cos, sin = self.backbone.rope(positions)
            none = cache_k[:, :, :0]
            return self.layer(x, cos, sin, KeyContext(cache_k, cache_v, cache_len, none, none))[0]

    cache = init_cache(tiny, 1)
    args = (torch.randn(1, 8, tiny.hidden), torch.arange(8)[None], cache.k[0], cache.v[0], torch.tensor([34]))
    onnx_program = torch.onnx.export(Layer(), args, dynamo=True, custom_translation_table=CUSTOM_TRANSLATION)
    onnx_program.save(tmp_path / "layer.onnx")
    model = onnx.load(tmp_path / "layer.onnx")
    onnx.checker.check_model(model)
    nodes = [(n.domain, n.op_type) for n in model.graph.node]
    assert nodes.count((DOMAIN, PARTIAL)) == 1 and nodes.count((DOMAIN, COMBINE)) == 1
    assert ("", "Softmax") not in nodes  # the attention is inside the plugin nodes
    partial = next(n for n in model.graph.node if n.op_type == PARTIAL)
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in partial.attribute}
    g = launch_geometry(1, tiny.n_heads, tiny.n_kv_heads, 8, tiny.head_dim, tiny.cache_capacity)
    assert attrs["plugin_namespace"] == b"streamer" and attrs["aot"] == 1
    assert (attrs["n_splits"], attrs["block_m"], attrs["block_n"], attrs["chunk"], attrs["num_warps"],
            attrs["num_stages"]) == (g.splits, g.block_m, g.block_n, g.chunk, g.num_warps, g.num_stages)


def test_tensorrt_parses_the_custom_node(tiny, tmp_path):
    """Where TensorRT is installed: the plugin is registered and the ONNX parser maps the node onto it."""
    trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed here: its PyPI wheels fetch their "
                                                 "binaries from a host this machine cannot reach")
    from kernels.tensorrt_plugin import register

    test_onnx_export_of_a_layer_holds_the_custom_node(tiny, tmp_path)
    register()
    logger = trt.Logger(trt.Logger.WARNING)
    network = trt.Builder(logger).create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse_from_file(str(tmp_path / "layer.onnx")), [parser.get_error(i) for i in range(parser.num_errors)]
    assert any(network.get_layer(i).type == trt.LayerType.PLUGIN_V3 for i in range(network.num_layers))


AOT_CHECK = r"""
import json, re, sys
from kernels.aot import compile_combine, compile_partial, launch_geometry
out = {}
for name, cache_dtype in (("bf16", "bfloat16"), ("fp8", "float8_e4m3fn")):
    g = launch_geometry(1, 16, 8, 196, 128, 16384, fp8=name == "fp8")
    p = compile_partial((1, 16, 196, 128), (1, 8, 16384, 128), 196, "bfloat16", cache_dtype, 0, g)
    entry = re.search(r"\.entry \w+\((.*?)\)", p.ptx, re.S).group(1)
    out[name] = {"params": entry.count(".param"), "scalars": len(p.scalars), "grid": p.grid,
                 "geometry": [g.m_blocks, g.splits], "block": p.block, "shared": p.shared, "warps": g.num_warps}
c = compile_combine((1, 16, 196, g.splits + 1, 128), "bfloat16")
out["combine"] = {"params": re.search(r"\.entry \w+\((.*?)\)", c.ptx, re.S).group(1).count(".param"),
                  "grid": c.grid, "scalars": c.scalars}
print(json.dumps(out))
"""


def test_aot_kernels_compile_for_hopper_with_the_plugin_calling_convention():
    """What the TensorRT AOT plugins embed: each kernel compiled by Triton for sm_90 (no GPU needed), its
    PTX entry taking exactly inputs, int32 scalars, outputs (Triton's scratch pointers stripped)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the compiler, not the interpreter
    run = subprocess.run([sys.executable, "-c", AOT_CHECK], capture_output=True, text=True, env=env,
                         cwd=Path(__file__).resolve().parent.parent, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    for name, n_inputs in (("bf16", 6), ("fp8", 8)):
        assert out[name]["params"] == n_inputs + out[name]["scalars"] + 2, out[name]  # + partial, lse
        m_blocks, splits = out[name]["geometry"]
        assert out[name]["grid"] == [m_blocks, 8, splits + 1] and out[name]["block"] == 32 * out[name]["warps"]
    assert out["combine"]["params"] == 3 + 3 + 1 and out["combine"]["grid"] == [196, 1, 1]  # 16*196 rows / 16
    report(f"AOT plugin kernels for sm_90: partial {out['bf16']['params']} params (fp8 {out['fp8']['params']}), "
           f"{out['bf16']['shared']} B shared, grid {out['bf16']['grid']}; combine grid {out['combine']['grid']}")


def test_sdpa_baseline_shares_kv_heads_instead_of_repeating_them(monkeypatch):
    """`--attention sdpa` (the benchmarks' SDPA baseline) matches the torch reference with GQA and an explicit
    local mask, and never repeats K/V per query head (`enable_gqa`): a repeat planted back is caught."""
    from model_src.attention import attend

    q, ck, cv, cl, lk, lv = _inputs(2, 8, 2, 5, 16, [7, 20], 20, 5)
    mask = torch.rand(1, 1, 5, 5, generator=torch.Generator().manual_seed(0)) > 0.3
    mask[..., -1] = True
    calls = []
    original = torch.Tensor.repeat_interleave
    monkeypatch.setattr(torch.Tensor, "repeat_interleave",
                        lambda self, *a, **k: calls.append(a) or original(self, *a, **k))
    for local_mask in (None, mask):
        err = (attend(q, ck, cv, cl, lk, lv, local_mask, "sdpa") - attend(q, ck, cv, cl, lk, lv, local_mask, "torch"))
        assert err.abs().max() < 1e-5
    assert calls == []
    keys = torch.cat([ck, lk], 2)
    keys.repeat_interleave(4, dim=1)  # the old baseline's GQA: the counter sees it
    assert calls == [(4,)]
