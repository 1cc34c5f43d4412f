"""The sections of bench/gpu_check.py: each takes the Context and returns a JSON-able dict."""
from __future__ import annotations

import copy
import importlib
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Context:
    preset: str
    units: int
    device: str
    dry_run: bool
    system: object = None  # the session's system (bf16, triton), reused by later sections


def gpu_key() -> str:
    """The planning/gpus.toml entry of this GPU (h100 when the name says nothing we know)."""
    name = torch.cuda.get_device_name().lower() if torch.cuda.is_available() else ""
    for key in ("h200", "b200", "a100", "l40s", "l4"):
        if key in name:
            return key
    return "h100-pcie" if "h100" in name and "pcie" in name else "h100"


def env(ctx: Context) -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "platform": platform.platform()}
    for lib in ("triton", "onnx", "onnxruntime", "tensorrt", "flash_attn", "safetensors"):
        try:
            out[lib] = getattr(importlib.import_module(lib), "__version__", "?")
        except Exception as e:  # noqa: BLE001 - absent or broken: say which
            out[lib] = f"not importable ({type(e).__name__})"
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        out.update(gpu=props.name, sms=props.multi_processor_count, memory_gib=round(props.total_memory / 2**30, 1),
                   capability=f"{props.major}.{props.minor}", gpus=torch.cuda.device_count(), plan_key=gpu_key())
        from runtime.device_process import mps_running

        out["mps"] = mps_running()
        try:
            out["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm,power.limit",
                                                "--format=csv,noheader"], capture_output=True, text=True,
                                               timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired) as e:
            out["nvidia_smi"] = f"not run ({type(e).__name__})"
    print("  " + ", ".join(f"{k} {v}" for k, v in out.items()))
    return out


def kernel_check(ctx: Context) -> dict:
    if ctx.dry_run:
        return {"skipped": "dry run: the kernel runs in the interpreter in the test suite instead"}
    from bench.attention import check

    rows = check()
    return {"rows": rows, "ok": all(r["ok"] for r in rows)}


def _system(ctx: Context, attention: str = "triton"):
    from model_src.config import get_preset
    from model_src.system import build_system

    if ctx.system is None:
        system = build_system(get_preset(ctx.preset), seed=0, device=ctx.device)
        system.model.to(torch.float32 if ctx.dry_run else torch.bfloat16)
        ctx.system = system
    ctx.system.model.backbone.set_attn_impl("torch" if ctx.dry_run and attention == "triton" else attention)
    return ctx.system


def session(ctx: Context) -> dict:
    """The base preset on the device path, one-gpu placement, CUDA graphs, against the plan."""
    from calibration.torch_engines import torch_device_parts
    from runtime.device_session import DeviceSession
    from unitio.media import split_units, synthetic_input
    from unitio.timing import percentiles

    system = _system(ctx)
    p = system.preset
    t0 = time.perf_counter()
    parts = torch_device_parts(system, ctx.device)
    warmup, n = 3, ctx.units
    audio, frames = synthetic_input(p, n + warmup, 0)
    units = split_units(audio, frames, p, n + warmup)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    with DeviceSession(None, engines=parts, device=ctx.device, seed=0) as s:
        setup_s = time.perf_counter() - t0
        handed, done, latency = {}, [], []
        for k, (a, f) in enumerate(units):
            handed[k] = time.perf_counter()
            r = s.step(a, f)
            if r.audio is not None and k - 1 >= warmup:
                latency.append(1000.0 * (time.perf_counter() - handed[k - 1]))
            done.append(time.perf_counter())
        s.flush()
        ledger = [dict(row) for row in list(s.ledger.units)[warmup:n + warmup]]
        graphs = s.graphs
    cycle = np.diff(done[warmup:]) * 1000.0
    per_unit = {d: float(np.mean([r[d] for r in ledger])) for d in ("h2d", "d2h", "d2d")}
    out = {"preset": p.name, "precision": "fp32" if ctx.dry_run else "bf16", "attention": "torch" if ctx.dry_run else "triton",
           "placement": "one-gpu", "cuda_graphs": graphs, "units": n, "setup_s": round(setup_s, 1),
           "unit_ms": percentiles(cycle.tolist()), "latency_ms": percentiles(latency),
           "bytes_per_unit": per_unit,
           "gpu_peak_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None}
    if not ctx.dry_run:
        out["plan"] = _plan(p, "bf16")
    print(f"  per unit p50 {out['unit_ms']['p50']:.1f} ms p99 {out['unit_ms']['p99']:.1f} ms; latency p50 "
          f"{out['latency_ms']['p50']:.1f} ms; bus {per_unit['h2d'] / 1e6:.2f} MB in, {per_unit['d2h'] / 1e6:.2f} MB out")
    return out


def _plan(p, precision: str) -> dict:
    from planning.budget import make_plan
    from streamer.plan_cmds import plan_json

    return plan_json(make_plan(p, gpu_key(), precision, "one-gpu"))


def _time_call(call, stream, repeats: int = 20) -> float:
    """Median ms of `call` on `stream` (CUDA events; on a CPU, wall time)."""
    if stream is None:
        times = []
        for _ in range(max(3, repeats // 4)):
            t0 = time.perf_counter()
            call()
            times.append(1000.0 * (time.perf_counter() - t0))
        return float(np.median(times))
    times = []
    with torch.cuda.stream(stream):
        for _ in range(repeats):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record(stream)
            call()
            b.record(stream)
            b.synchronize()
            times.append(a.elapsed_time(b))
    return float(np.median(times))


def _stage_calls(system, device: str) -> dict:
    """thinker_step and flow_step bound on a full cache (steady state), captured as CUDA graphs."""
    from calibration.torch_engines import torch_device_parts
    from runtime.device import Device, torch_dtype
    from runtime.device_state import DeviceKVCache
    from runtime.spec import unit_spec

    manifest, engines, initial = torch_device_parts(system, device)
    dev, spec = Device(device), unit_spec(manifest)
    cache = DeviceKVCache(spec, dev, initial.get("kv_cache"))
    cache.length.fill_(spec.cache_shape[3])
    stream = dev.stream()
    calls = {}
    for name in ("thinker_step", "flow_step"):
        e = engines[name]
        feeds = {t.name: dev.empty(t.shape, torch_dtype(t.dtype)) for t in e.inputs}
        feeds.update(cache.feeds([t.name for t in e.inputs]))
        call = e.bind(feeds, e.allocate_outputs())
        calls[name] = dev.capture(call, stream)
    return {"calls": calls, "stream": stream, "cache": cache}


def stage_attention(ctx: Context) -> dict:
    out = {}
    for attention in ("triton", "sdpa"):
        system = _system(ctx, attention)
        bound = _stage_calls(system, ctx.device)
        out[attention] = {n: _time_call(c, bound["stream"]) for n, c in bound["calls"].items()}
        del bound
        print(f"  {attention}: " + ", ".join(f"{n} {ms:.2f} ms" for n, ms in out[attention].items()))
    out["speedup"] = {n: out["sdpa"][n] / out["triton"][n] for n in out["triton"]}
    _system(ctx, "triton")
    return out


def kernel_timing(ctx: Context) -> dict:
    if ctx.dry_run:
        return {"skipped": "dry run"}
    from triton.testing import do_bench

    import kernels.ops  # noqa: F401
    from bench.attention import D, available_methods, inputs
    from planning.budget import gpus

    hbm = gpus()[gpu_key()]["hbm_gbps"]
    methods = available_methods()
    rows = []
    shapes = [("base", 16, 8, "flow", 196, n) for n in (4096, 16384, 32768)] + \
             [("large", 28, 4, "thinker", 250, n) for n in (4096, 16384, 32768)]
    for preset, hq, hkv, kind, n_q, n in shapes:
        q, ck, cv, cl, lk, lv = inputs(1, hq, hkv, n_q, n, torch.bfloat16)
        bytes_moved = 2 * hkv * (n + n_q) * D * ck.element_size() + 2 * q.numel() * q.element_size()
        row = {"preset": preset, "queries": f"{kind} {n_q}", "keys": n}
        for name, make in methods.items():
            if name.startswith("flex") and not (n_q == 196 and n == 16384 or n_q == 250 and n == 32768):
                continue  # FlexAttention compiles per shape: the goal shapes only
            try:
                ms = do_bench(make(q, ck, cv, cl, lk, lv), warmup=10, rep=50)
                row[name] = {"ms": ms, "hbm_fraction": bytes_moved / (ms * 1e-3) / (hbm * 1e9)}
            except Exception as e:  # noqa: BLE001 - a backend that cannot run a shape is reported
                row[name] = {"error": str(e).splitlines()[0][:120]}
        rows.append(row)
        print("  " + f"{preset} {kind} {n_q}x{n}: " + ", ".join(
            f"{k} {v['ms']:.3f}" for k, v in row.items() if isinstance(v, dict) and "ms" in v))
    goal = next(r for r in rows if r["queries"] == "flow 196" and r["keys"] == 16384)
    ours = goal["triton (ours)"].get("ms")
    ratios = {k: v["ms"] / ours for k, v in goal.items() if isinstance(v, dict) and "ms" in v and ours}
    return {"rows": rows, "goal_196x16k_speedup": ratios,
            "hbm_fraction_32k": {r["queries"]: r["triton (ours)"].get("hbm_fraction") for r in rows if r["keys"] == 32768}}


def fp8_flow(ctx: Context) -> dict:
    """flow_step (4 Euler steps from the same noise) with FP8 GEMMs against bf16: time and latent cosine."""
    if ctx.dry_run or torch.cuda.get_device_capability() < (8, 9):
        return {"skipped": "needs FP8 tensor cores (compute capability 8.9+)" if not ctx.dry_run else "dry run"}
    from bench.fp8_linear import to_fp8

    system = _system(ctx, "triton")
    fp8_system = SimpleNamespace(preset=system.preset, model=copy.deepcopy(system.model), audio_vae=system.audio_vae,
                                 video_vae=system.video_vae)  # the same codecs; the transformer's GEMMs in FP8
    replaced = to_fp8(fp8_system.model.backbone.layers)
    out = {"linears_fp8": replaced}
    latents = {}
    for label, sys_ in (("bf16", system), ("fp8", fp8_system)):
        bound = _stage_calls(sys_, ctx.device)
        out[f"{label}_ms"] = _time_call(bound["calls"]["flow_step"], bound["stream"])
        latents[label] = _solve(sys_, ctx.device)
        del bound
    a, b = (latents[k].double().flatten() for k in ("bf16", "fp8"))
    out["latent_cosine"] = float(a @ b / (a.norm() * b.norm()))
    out["speedup"] = out["bf16_ms"] / out["fp8_ms"]
    del fp8_system
    print(f"  flow_step bf16 {out['bf16_ms']:.2f} ms, fp8 {out['fp8_ms']:.2f} ms ({out['speedup']:.2f}x), "
          f"latent cosine {out['latent_cosine']:.4f}")
    return out


def _solve(system, device: str) -> torch.Tensor:
    """y of one unit (4 Euler steps) on a random half-full cache: the video latents, float32."""
    from model_src.flow import euler_solve

    p, g = system.preset, torch.Generator(device).manual_seed(1)
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


def engines(ctx: Context) -> dict:
    """tiny AOTInductor CUDA packages (`streamer build`), one-gpu and two-process placements."""
    import tempfile

    if ctx.dry_run:
        return {"skipped": "dry run: CPU engines run the device path in tests/test_device_runtime.py"}
    from runtime.bench import bench_mode
    from unitio.media import split_units, synthetic_input

    folder = Path(tempfile.mkdtemp()) / "tiny_aoti_cuda"
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "streamer.cli", "build", "--preset", "tiny", "--weights-seed", "0", "--backend", "aoti",
           "--device", "cuda", "--precision", "bf16", "--out", str(folder)]
    build = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    out = {"build_s": round(time.perf_counter() - t0, 1), "build_rc": build.returncode}
    if build.returncode != 0:
        out["build_error"] = (build.stdout + build.stderr)[-2000:]
        return out
    from model_src.config import get_preset

    p = get_preset("tiny")
    audio, frames = synthetic_input(p, 12, 0)
    units = split_units(audio, frames, p, 12)
    runs = {}
    for placement in ("one-gpu", "two-process"):
        r = bench_mode(folder, placement, units, seed=0, threads=None, warmup=2, device="cuda")
        runs[placement] = r
        out[placement] = {k: r[k] for k in ("unit_ms", "latency_ms", "bytes_per_unit", "cuda_graphs", "notes")}
    out["bitwise_equal"] = bool(np.array_equal(runs["one-gpu"]["audio"], runs["two-process"]["audio"])
                                and np.array_equal(runs["one-gpu"]["tokens"], runs["two-process"]["tokens"]))
    print(f"  tiny aoti cuda: one-gpu {out['one-gpu']['unit_ms']['p50']:.2f} ms, two-process "
          f"{out['two-process']['unit_ms']['p50']:.2f} ms per unit; bitwise equal {out['bitwise_equal']}")
    return out


# name -> (function, seconds it needs at least, on an H100)
SECTIONS = {"env": (env, 1), "kernel_check": (kernel_check, 15), "session": (session, 60),
            "stage_attention": (stage_attention, 40), "kernel_timing": (kernel_timing, 60),
            "fp8_flow": (fp8_flow, 30), "engines": (engines, 120)}
