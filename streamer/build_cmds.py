"""`streamer export`, `streamer build --from-onnx` and the options every build takes (precision,
attention, KV-cache dtype, calibration)."""
from __future__ import annotations

import argparse
from pathlib import Path

from .outputs import console


def add_build_options(parser: argparse.ArgumentParser) -> None:
    """--precision, --attention, --kv-cache, --calibration, --algorithm (export/options.py says what each makes)."""
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16", "int8", "fp8"],
                        help="fp32 (default); fp16/bf16: the transformer stages' activations and KV cache in that "
                             "dtype (trt, aoti --device cuda, export); int8/fp8: modelopt Q/DQ, need --calibration")
    parser.add_argument("--attention", default=None, choices=["triton", "sdpa", "torch"],
                        help="the transformer stages' attention: triton (our kernel; default on CUDA targets), sdpa, "
                             "or torch (the reference's two matmuls; default on CPU targets)")
    parser.add_argument("--kv-cache", default="auto", choices=["auto", "fp8"],
                        help="auto: the activation dtype; fp8: E4M3 with per-layer, per-head scales from --calibration")
    parser.add_argument("--calibration", type=Path,
                        help="calibration set from `streamer calibrate` (int8/fp8 precision, --kv-cache fp8)")
    parser.add_argument("--algorithm", default="max", choices=["max", "smoothquant"],
                        help="modelopt calibration algorithm for int8 (default max; fp8: max)")


def _progress_build(title: str, run) -> dict:
    """Run `run(on_stage)` under a progress bar of the six stages; returns its manifest."""
    from rich.progress import Progress

    with Progress(console=console) as bar:
        task = bar.add_task(title, total=6)
        started: list[str] = []

        def on_stage(name: str) -> None:
            bar.update(task, description=f"{name}", completed=len(started))
            started.append(name)

        manifest = run(on_stage)
        bar.update(task, completed=6, description="done")
    return manifest


def export(args, load_system) -> int:
    """`streamer export`: the checked ONNX of every stage + manifest, for `build --from-onnx` on the target."""
    from export.build import build
    from runtime.manifest import sha256

    system = load_system(args.preset, args.weights, args.weights_seed)
    weights = ({"file": str(args.weights.resolve()), "sha256": sha256(args.weights)} if args.weights
               else {"seed": args.weights_seed})
    manifest = _progress_build(
        f"exporting {system.preset.name} ({args.precision}, attention {args.attention or 'triton'})",
        lambda on_stage: build(system, args.out, "onnx", args.precision, weights, on_stage, "cpu", args.calibration,
                               args.algorithm, args.attention, args.kv_cache))
    console.print(f"wrote the ONNX of {len(manifest['stages'])} stages ({manifest['precision']}, attention "
                  f"{manifest['attention']}, KV cache {manifest['kv_cache']['dtype']}) and manifest.json to "
                  f"{args.out}; build the engines on the target GPU with `streamer build --from-onnx {args.out} "
                  f"--backend trt --out ENGINES`")
    return 0


def build_from_export(args) -> int:
    """`streamer build --from-onnx DIR --backend trt|ort`: engines from an ONNX export, built here."""
    from export.build import build_from_onnx

    if args.weights is not None or args.preset is not None:
        raise ValueError("--from-onnx builds what the export holds: its preset and weights; drop --preset/--weights")
    manifest = _progress_build(f"building {args.from_onnx} ({args.backend})",
                               lambda on_stage: build_from_onnx(args.from_onnx, args.out, args.backend, on_stage))
    console.print(f"wrote {len(manifest['stages'])} {args.backend} engines and manifest.json to {args.out}")
    return 0
