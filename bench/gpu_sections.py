"""The sections of bench/gpu_check.py: each takes the Context and returns a JSON-able dict.

Each section runs in its own process (bench/gpu_check.py starts it and kills it at the deadline);
`ctx.record(key, value)` writes a measurement to gpu_check.json as soon as it is taken, so a section
killed later keeps what it measured.
"""
from __future__ import annotations

import importlib
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from bench.kernel_sections import fp8_flow, kernel_timing  # the kernel sections (bench/kernel_sections.py)

ROOT = Path(__file__).resolve().parent.parent
NO_DATASHEET = "no datasheet entry"


@dataclass
class Context:
    preset: str
    units: int
    device: str
    dry_run: bool
    system: object = None  # the section's system (bf16, its attention), reused within the section
    prime: int | None = None  # units streamed before timing (None: sink + window, the ring full)
    attention: str = "triton"  # the headline's attention (a dry run: sdpa, the Triton interpreter is slow)
    precision: str = "bf16"
    plan_gpu: str | None = None  # the planning/gpus.toml entry to plan for (None: this GPU's, if it has one)
    deadline_at: float = float("inf")  # epoch seconds: the run's hard deadline (the parent kills at it)
    record: Callable[[str, object], None] = field(default=lambda key, value: None)  # a measurement -> the JSON

    def seconds_left(self) -> float:
        return self.deadline_at - time.time()


def datasheet_key(name: str) -> str | None:
    """The planning/gpus.toml entry of a GPU by its CUDA name, or None when the table has none for it
    (another memory size, NVL, PCIe A100, GH200, ...): such a GPU is named, never priced as another."""
    n = name.lower().replace("nvidia", " ").replace("-", " ")
    if "nvl" in n:
        return None
    if re.search(r"\bh100\b", n):
        return "h100-pcie" if "pcie" in n else "h100" if re.search(r"\b(sxm|hbm3)\b", n) else None
    rules = ((r"\bh200\b", "h200"), (r"\ba100\b.*\bsxm4?\b.*\b80gb\b", "a100"),
             (r"\bl40s\b", "l40s"), (r"\bl4\b", "l4"), (r"\bb200\b", "b200"))
    return next((key for pattern, key in rules if re.search(pattern, n)), None)


def gpu_key() -> str | None:
    """This machine's GPU's planning/gpus.toml entry (None without CUDA or without an entry for it)."""
    return datasheet_key(torch.cuda.get_device_name()) if torch.cuda.is_available() else None


def _version(cmd: list[str]) -> str:
    """The first line a tool prints for its version (or why it could not say)."""
    if shutil.which(cmd[0]) is None and not Path(cmd[0]).is_file():
        return "not found"
    try:
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"not run ({type(e).__name__})"
    lines = [ln for ln in (run.stdout + run.stderr).splitlines() if ln.strip()]
    return next((ln for ln in lines if "release" in ln), lines[0] if lines else f"rc {run.returncode}").strip()


def env(ctx: Context) -> dict:
    """Python, torch, triton, CUDA, the GPU (and its datasheet entry), the toolchain AOTInductor for CUDA
    needs (CUDA_HOME, nvcc, g++), MPS, and which optional libraries import."""
    out = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "platform": platform.platform(), "cuda_available": torch.cuda.is_available()}
    for lib in ("triton", "onnx", "onnxruntime", "tensorrt", "flash_attn", "safetensors", "rich"):
        try:
            out[lib] = getattr(importlib.import_module(lib), "__version__", "?")
        except Exception as e:  # noqa: BLE001 - absent or broken: say which
            out[lib] = "not installed" if isinstance(e, ModuleNotFoundError) else f"not importable ({type(e).__name__})"
    from torch.utils.cpp_extension import CUDA_HOME

    out["cuda_home"] = os.environ.get("CUDA_HOME") or CUDA_HOME or "not set"
    nvcc = str(Path(CUDA_HOME) / "bin" / "nvcc") if CUDA_HOME else "nvcc"
    out["nvcc"] = _version([nvcc if Path(nvcc).is_file() else "nvcc", "--version"])
    out["gxx"] = _version(["g++", "--version"])
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        key = gpu_key()
        out.update(gpu=props.name, sms=props.multi_processor_count, memory_gib=round(props.total_memory / 2**30, 1),
                   capability=f"{props.major}.{props.minor}", gpus=torch.cuda.device_count(),
                   plan_key=key or NO_DATASHEET)
        from runtime.device.process import mps_running

        out["mps"] = mps_running()
        out["nvidia_smi"] = _version(["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm,power.limit",
                                      "--format=csv,noheader"])
    print("  " + ", ".join(f"{k} {v}" for k, v in out.items()), flush=True)
    return out


def kernel_check(ctx: Context) -> dict:
    if ctx.dry_run:
        return {"skipped": "dry run: the kernel runs in the interpreter in the test suite instead"}
    from bench.attention import check

    rows = check()
    return {"rows": rows, "ok": all(r["ok"] for r in rows)}


def _system(ctx: Context, attention: str = "triton"):
    """The preset's system on the device in the context's precision (bf16), with `attention` inside (on a
    dry run "triton" means the context's attention: the interpreter is too slow for whole sessions)."""
    from model_src.config import get_preset
    from model_src.system import build_system

    if ctx.system is None:
        system = build_system(get_preset(ctx.preset), seed=0, device=ctx.device)
        system.model.to(getattr(torch, {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}[ctx.precision]))
        ctx.system = system
    ctx.system.model.backbone.set_attn_impl(ctx.attention if ctx.dry_run and attention == "triton" else attention)
    return ctx.system


def session(ctx: Context) -> dict:
    """The headline: base, bf16, our kernel, one-gpu, CUDA graphs, steady state, against the plan
    (bench/gpu_session.py)."""
    from bench.gpu_session import headline

    return headline(ctx)


def _time_call(call, stream, repeats: int = 20) -> float:
    """Median ms of `call` on `stream` (CUDA events; on a CPU, wall time)."""
    if not isinstance(stream, torch.cuda.Stream):  # a CPU (its twin streams: wall time)
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
    from runtime.device.device import Device, torch_dtype
    from runtime.device.state import DeviceKVCache
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
        ctx.record(attention, out[attention])
        del bound
        print(f"  {attention}: " + ", ".join(f"{n} {ms:.2f} ms" for n, ms in out[attention].items()))
    out["speedup"] = {n: out["sdpa"][n] / out["triton"][n] for n in out["triton"]}
    if ctx.dry_run:
        out["note"] = f"dry run: 'triton' ran as {ctx.attention} (the Triton interpreter is too slow): timings mean nothing"
    _system(ctx, "triton")
    return out


def engines(ctx: Context) -> dict:
    """tiny AOTInductor CUDA packages (`streamer build`, bounded by the deadline), one-gpu and two-process
    placements. A failed or timed-out build fails the section with its rc and output's tail."""
    import tempfile

    if ctx.dry_run:
        return {"skipped": "dry run: CPU engines run the device path in tests/test_device_runtime.py"}
    from runtime.bench import bench_mode
    from unitio.media import split_units, synthetic_input

    folder = Path(tempfile.mkdtemp()) / "tiny_aoti_cuda"
    t0 = time.perf_counter()
    cmd = [sys.executable, "-P", "-m", "streamer.cli", "build", "--preset", "tiny", "--weights-seed", "0", "--backend",
           "aoti", "--device", "cuda", "--precision", "bf16", "--out", str(folder)]
    limit = max(1.0, ctx.seconds_left() - 60.0)  # a minute kept for the two placements' runs
    try:
        build = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=limit,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
        rc, text = build.returncode, build.stdout + build.stderr
    except subprocess.TimeoutExpired as e:
        rc, text = "timed out", f"{(e.stdout or b'')[-1500:]!r} {(e.stderr or b'')[-1500:]!r}"
    ctx.record("build_s", round(time.perf_counter() - t0, 1))
    ctx.record("build_rc", rc)
    if rc != 0:
        ctx.record("build_error", text[-2000:])
        raise RuntimeError(f"streamer build --backend aoti --device cuda: rc {rc} after {time.perf_counter() - t0:.0f} s"
                           f" (limit {limit:.0f} s): {(text.strip().splitlines() or [''])[-1][:300]}")
    from model_src.config import get_preset

    p = get_preset("tiny")
    audio, frames = synthetic_input(p, 12, 0)
    units = split_units(audio, frames, p, 12)
    runs, out = {}, {}
    for placement in ("one-gpu", "two-process"):
        r = bench_mode(folder, placement, units, seed=0, threads=None, warmup=2, device="cuda")
        runs[placement] = r
        out[placement] = {k: r[k] for k in ("unit_ms", "latency_ms", "bytes_per_unit", "cuda_graphs", "notes")}
        ctx.record(placement, out[placement])
    out["bitwise_equal"] = bool(np.array_equal(runs["one-gpu"]["audio"], runs["two-process"]["audio"])
                                and np.array_equal(runs["one-gpu"]["tokens"], runs["two-process"]["tokens"]))
    print(f"  tiny aoti cuda: one-gpu {out['one-gpu']['unit_ms']['p50']:.2f} ms, two-process "
          f"{out['two-process']['unit_ms']['p50']:.2f} ms per unit; bitwise equal {out['bitwise_equal']}")
    return out


# name -> function; bench/gpu_check.py holds their order and time budgets (it does not import torch)
SECTIONS = {"env": env, "session": session, "kernel_check": kernel_check, "stage_attention": stage_attention,
            "kernel_timing": kernel_timing, "fp8_flow": fp8_flow, "engines": engines}
