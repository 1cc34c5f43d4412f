"""The one-call GPU check: everything the GPU data path claims, measured on a fresh machine in one run.

    python bench/gpu_check.py [--out DIR] [--budget-s 480] [--units 50]
    python bench/gpu_check.py --dry-run            # the same sections at tiny on the CPU (the script's logic)

Sections, in order of importance, each timed and skipped (with the reason) once the budget runs short:
  env              python, torch, triton, CUDA, the GPU, MPS, which optional libraries import
  kernel_check     the Triton attention kernel against the SDPA reference in fp32/fp16/bf16 and FP8 cache
  session          base preset, bf16, our kernel inside, torch stage modules in process on the device
                   path (one-gpu placement, CUDA graphs): per-unit p50/p99, model-side latency, ledger
                   bytes per unit, peak GPU memory, beside `streamer plan`'s figures for the same setup
  stage_attention  thinker_step and flow_step per call with --attention triton against sdpa (CUDA graphs)
  kernel_timing    the kernel against SDPA (flash, efficient, cuDNN), FlexAttention and flash-attn at base
                   and large shapes, 196/250 queries x 4k-32k keys; achieved HBM bandwidth
  fp8_flow         flow_step with FP8 GEMMs (torch._scaled_mm) against bf16: time and latent cosine
  engines          tiny AOTInductor CUDA packages through `streamer build`, run in one-gpu and
                   two-process placements (CUDA IPC, pinned slots, graphs over AOTI): bitwise equal?
Writes gpu_check.json and gpu_check.md into --out (default $OUT, else the current folder), after each
section, so a run cut short still returns what it measured. Needs only torch (+ triton) and this repo;
the `engines` section runs `streamer build`, which also wants rich, safetensors, tqdm and imageio: on a
machine without a registry, carry them (`bash bench/gpu_wheels.sh` here, then on the device
`pip install --no-index --find-links .gpu_wheels rich safetensors tqdm imageio` first).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere, without an install

from bench.gpu_sections import SECTIONS, Context  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")), help="folder for the results")
    ap.add_argument("--budget-s", type=float, default=480.0, help="stop starting sections after this (default 480)")
    ap.add_argument("--units", type=int, default=50, help="units streamed in the session section (default 50)")
    ap.add_argument("--preset", default=None, help="default base (tiny with --dry-run)")
    ap.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset, in this order")
    ap.add_argument("--dry-run", action="store_true", help="tiny preset on the CPU: check the script, measure nothing")
    args = ap.parse_args()
    if not args.dry_run and not torch.cuda.is_available():
        print("bench/gpu_check.py needs an NVIDIA GPU (torch.cuda.is_available() is False); use --dry-run here.")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    ctx = Context(preset=args.preset or ("tiny" if args.dry_run else "base"), units=args.units,
                  device="cpu" if args.dry_run else "cuda", dry_run=args.dry_run)
    results = {"command": " ".join(sys.argv), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
               "machine": platform.node(), "sections": {}}
    t_start = time.perf_counter()
    for name in [s.strip() for s in args.sections.split(",") if s.strip()]:
        if name not in SECTIONS:
            print(f"unknown section {name!r}; known: {list(SECTIONS)}")
            return 2
        fn, estimate_s = SECTIONS[name]
        left = args.budget_s - (time.perf_counter() - t_start)
        if left < estimate_s:
            results["sections"][name] = {"skipped": f"{left:.0f} s left of the budget, it needs ~{estimate_s:.0f} s"}
            print(f"== {name}: skipped ({left:.0f} s left)")
            continue
        print(f"== {name} ({left:.0f} s left)", flush=True)
        t0 = time.perf_counter()
        try:
            results["sections"][name] = {**fn(ctx), "seconds": round(time.perf_counter() - t0, 1)}
        except Exception as e:  # noqa: BLE001 - a failed section is reported, the next one still runs
            results["sections"][name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:],
                                         "seconds": round(time.perf_counter() - t0, 1)}
            print(f"   FAILED: {type(e).__name__}: {e}", flush=True)
        finally:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        _write(args.out, results)
    results["seconds"] = round(time.perf_counter() - t_start, 1)
    _write(args.out, results)
    print(f"wrote {args.out / 'gpu_check.json'} and {args.out / 'gpu_check.md'} ({results['seconds']} s)")
    return 0


def _write(folder: Path, results: dict) -> None:
    from bench.gpu_report import markdown

    (folder / "gpu_check.json").write_text(json.dumps(results, indent=1, default=_plain))
    (folder / "gpu_check.md").write_text(markdown(results))


def _plain(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return str(x)


if __name__ == "__main__":
    sys.exit(main())
