"""The kernel sections of bench/gpu_check.py: the attention kernel's speed and the FP8 flow_step.

Each takes the gpu_sections Context and returns a JSON-able dict; on a dry run (the CPU) each runs its
logic at the tiny shapes and says it measured nothing that counts.
"""
from __future__ import annotations

import copy
from types import SimpleNamespace

import torch

GOAL = ("flow 196", 16384)  # the shape the kernel's goal is stated at (docs/BENCHMARKS.md)


def kernel_timing(ctx) -> dict:
    """Our kernel (bf16 and FP8 cache) against SDPA (contiguous keys prepared outside the timed call,
    enable_gqa), FlexAttention and flash-attn at base flow 196 and large thinker 252 queries over 4k-32k
    keys: ms, TFLOP/s, % of the dense bf16 peak, GB/s. Each row goes to the JSON as it is measured."""
    from bench.attention import DRY_SHAPES, OURS, available_methods, datasheet, measure, wall_ms
    from bench.gpu_sections import NO_DATASHEET, gpu_key

    if ctx.dry_run:
        key, shapes, device, d, dtype, timer = ctx.plan_gpu or "h100", DRY_SHAPES, "cpu", 32, torch.float32, wall_ms
    else:
        from triton.testing import do_bench

        key, device, d, dtype = ctx.plan_gpu or gpu_key(), "cuda", 128, torch.bfloat16
        shapes = [("base", 16, 8, "flow", 196, n) for n in (4096, 16384, 32768)] + \
                 [("large", 28, 4, "thinker", 252, n) for n in (4096, 16384, 32768)]
        timer = lambda fn: do_bench(fn, warmup=10, rep=50)  # noqa: E731
    entry = datasheet(key)
    peak = entry["tflops_bf16"] if entry else None
    ctx.record("peak_tflops_bf16", peak)

    def skip(name, shape):  # FlexAttention compiles per shape: the goal shapes only
        return name.startswith("flex") and (f"{shape[3]} {shape[4]}", shape[5]) not in (GOAL, ("thinker 252", 32768))

    rows = measure(shapes, available_methods(ctx.dry_run), timer, peak, dtype=dtype, device=device, d=d, skip=skip,
                   on_row=lambda done: ctx.record("rows", done))
    goal = next((r for r in rows if (r["queries"], r["keys"]) == GOAL), rows[0])
    ours = goal.get(OURS, {}).get("ms")
    ratios = {k: v["ms"] / ours for k, v in goal.items() if isinstance(v, dict) and "ms" in v and ours}
    return {"gpu": key or NO_DATASHEET, "peak_tflops_bf16": peak, "rows": rows,
            "goal": f"{goal['preset']} {goal['queries']} x {goal['keys']}", "goal_196x16k_speedup": ratios,
            "ours_peak_pct": {f"{r['preset']} {r['queries']} x {r['keys']}": r.get(OURS, {}).get("peak_pct")
                              for r in rows}}


def fp8_flow(ctx) -> dict:
    """flow_step (the preset's Euler steps from the same noise) with FP8 GEMMs against bf16: time and latent
    cosine. The FP8 linears take static per-tensor activation scales calibrated on another unit's inputs
    (seed 2) than the one compared (seed 1), as an FP8 engine's calibration would."""
    if not ctx.dry_run and torch.cuda.get_device_capability() < (8, 9):
        return {"skipped": "needs FP8 tensor cores (compute capability 8.9+)"}
    from bench.fp8_linear import calibrate, to_fp8
    from bench.gpu_sections import _stage_calls, _system, _time_call

    system = _system(ctx, "triton")
    fp8_system = SimpleNamespace(preset=system.preset, model=copy.deepcopy(system.model), audio_vae=system.audio_vae,
                                 video_vae=system.video_vae)  # the same codecs; the transformer's GEMMs in FP8
    replaced = to_fp8(fp8_system.model.backbone.layers)
    with calibrate(fp8_system.model) as layers:
        solve(fp8_system, ctx.device, seed=2)
    out = {"linears_fp8": replaced, "activation_scales": "static per tensor, calibrated on one unit (seed 2)",
           "scale_range": [min(float(m.input_scale) for m in layers), max(float(m.input_scale) for m in layers)]
           if layers else None}
    latents = {}
    for label, sys_ in (("bf16", system), ("fp8", fp8_system)):
        bound = _stage_calls(sys_, ctx.device)
        out[f"{label}_ms"] = _time_call(bound["calls"]["flow_step"], bound["stream"])
        ctx.record(f"{label}_ms", out[f"{label}_ms"])
        latents[label] = solve(sys_, ctx.device, seed=1)
        del bound
    a, b = (latents[k].double().flatten() for k in ("bf16", "fp8"))
    out["latent_cosine"] = float(a @ b / (a.norm() * b.norm()))
    out["speedup"] = out["bf16_ms"] / out["fp8_ms"]
    if ctx.dry_run:
        out["note"] = "dry run: the tiny preset on the CPU; the logic only, no measurement"
    del fp8_system
    print(f"  flow_step bf16 {out['bf16_ms']:.2f} ms, fp8 {out['fp8_ms']:.2f} ms ({out['speedup']:.2f}x), "
          f"latent cosine {out['latent_cosine']:.4f}")
    return out


def solve(system, device: str, seed: int) -> torch.Tensor:
    """y of one unit (the preset's Euler steps) on a random half-full cache drawn from `seed`: the video
    latents, float32."""
    from model_src.flow import euler_solve

    p, g = system.preset, torch.Generator(device).manual_seed(seed)
    shape = (p.n_layers, 1, p.n_kv_heads, p.cache_capacity, p.head_dim)
    k, v = (torch.randn(shape, generator=g, device=device).to(system.model.dtype) for _ in range(2))
    length = torch.full((1,), p.cache_capacity // 2, device=device)
    index = torch.full((1,), 10, device=device)
    na = torch.randn(1, p.audio_frames_per_unit, p.audio_z, generator=g, device=device)
    nv = torch.randn(1, p.video_z, p.latent_height, p.latent_width, generator=g, device=device)
    with torch.no_grad():
        _, yv = euler_solve(lambda xa, xv, t: system.model.flow_step(xa, xv, t, k, v, length, index), na, nv,
                            p.flow_steps)
    return yv.float()
