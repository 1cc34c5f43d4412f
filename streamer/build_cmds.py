"""`streamer build`, `streamer export`, `streamer inspect` and the options every build takes (precision,
attention, KV-cache dtype, calibration)."""
from __future__ import annotations

import argparse
from pathlib import Path

from . import args as types
from .model_cmds import add_model_args, load_system
from .outputs import console
from .trust_cmds import check_key_first, sign_if_asked


def add_build_command(sub) -> None:
    """Register `build`."""
    build = sub.add_parser("build", help="export every stage to ONNX and build engines + manifest.json")
    add_model_args(build)
    build.add_argument("--backend", default="ort", choices=["ort", "aoti", "trt"], help="engine backend (default: ort)")
    build.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                       help="aoti: compile for this machine's CPU or GPU (CUDA packages run as CUDA graphs)")
    build.add_argument("--from-onnx", type=Path, metavar="DIR",
                       help="build the engines of an ONNX export (`streamer export`) instead of exporting here")
    add_build_options(build)
    build.add_argument("--sign", type=Path, metavar="KEY",
                       help="sign the engine directory with this Ed25519 private key (`streamer keygen`)")
    build.add_argument("--out", type=Path, required=True, help="engine directory to write")
    build.set_defaults(func=cmd_build)


def add_export_command(sub) -> None:
    """Register `export`."""
    exp = sub.add_parser("export", help="the checked ONNX of every stage + manifest, to build engines on the target GPU")
    add_model_args(exp)
    add_build_options(exp)
    exp.add_argument("--out", type=Path, required=True, help="folder to write the ONNX export to")
    exp.set_defaults(func=export)


def add_inspect_command(sub) -> None:
    """Register `inspect`."""
    inspect_ = sub.add_parser("inspect", help="show what an engine directory holds")
    inspect_.add_argument("engines", type=Path, help="engine directory")
    types.add_trust_arg(inspect_)
    inspect_.set_defaults(func=inspect)


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
    parser.add_argument("--batch", type=int, default=1,
                        help="sessions per engine call (default 1): every stage takes B rows, each its own session "
                             "(`streamer serve` runs B sessions per replica)")


def _progress_build(title: str, run, verb: str = "") -> dict:
    """Run `run(on_stage)` under a progress bar of the six stages (each shown as `verb` + its name);
    returns its manifest."""
    from rich.progress import Progress

    with Progress(console=console) as bar:
        task = bar.add_task(title, total=6)
        started: list[str] = []

        def on_stage(name: str) -> None:
            bar.update(task, description=f"{verb}{name}", completed=len(started))
            started.append(name)

        manifest = run(on_stage)
        bar.update(task, completed=6, description="done")
    return manifest


def cmd_build(args) -> int:
    """`streamer build`: every stage exported and built here (--from-onnx: an export's), signed with --sign."""
    from export.build import build

    check_key_first(args)
    if args.from_onnx is not None:
        return build_from_export(args) or sign_if_asked(args)
    system = load_system(args.preset, args.weights, args.weights_seed)
    weights = system.weights_source  # {"embedded": name, "sha256"}, {"file", "sha256"} or {"seed"}
    manifest = _progress_build(
        f"building {system.preset.name} ({args.backend}, {args.precision})",
        lambda on_stage: build(system, args.out, args.backend, args.precision, weights, on_stage, args.device,
                               args.calibration, args.algorithm, args.attention, args.kv_cache, args.batch),
        verb="exporting ")
    console.print(f"wrote {len(manifest['stages'])} {args.backend} engines and manifest.json to {args.out}")
    return sign_if_asked(args)


def export(args) -> int:
    """`streamer export`: the checked ONNX of every stage + manifest, for `build --from-onnx` on the target."""
    from export.build import build
    from runtime.manifest import sha256

    system = load_system(args.preset, args.weights, args.weights_seed)
    weights = getattr(system, "weights_source", None) or (
        {"file": str(args.weights.resolve()), "sha256": sha256(args.weights)} if args.weights else {"seed": args.weights_seed})
    manifest = _progress_build(
        f"exporting {system.preset.name} ({args.precision}, attention {args.attention or 'triton'})",
        lambda on_stage: build(system, args.out, "onnx", args.precision, weights, on_stage, "cpu", args.calibration,
                               args.algorithm, args.attention, args.kv_cache, args.batch))
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


def inspect(args) -> int:
    """`streamer inspect`: the manifest as tables (precision and attention per stage), the signature's state."""
    from rich.table import Table

    from runtime.manifest import read_manifest
    from runtime.signing import SIGNATURE

    from .outputs import out

    m = read_manifest(args.engines, trust=args.trust)
    signed = (args.engines / SIGNATURE).is_file()
    out.print(f"signature: {'verified with ' + str(args.trust) if args.trust else 'present, not checked (give --trust PUBKEY)' if signed else 'none'}")
    kv = m.get("kv_cache", {}).get("dtype", "float32")
    out.print(f"preset {m['preset']['name']}, backend {m['backend']} ({m['backend_library']}), precision "
              f"{m['precision']}, attention {m.get('attention', 'torch')}, KV cache {kv}, target "
              f"{m['target']['device']} {m['target']['machine']}")
    out.print("versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v))
    out.print(f"weights: {m['weights']}")
    table = Table(title="stages")
    for col in ("stage", "file", "precision", "attention", "inputs", "outputs"):
        table.add_column(col)
    for stage, info in m["stages"].items():
        fmt = lambda ts: "\n".join(f"{t['name']} {t['dtype']} {t['shape']}" for t in ts)
        table.add_row(stage, info["file"], info.get("precision", m["precision"]), info.get("attention") or "-",
                      fmt(info["inputs"]), fmt(info["outputs"]))
    out.print(table)
    files = Table(title="files")
    files.add_column("file")
    files.add_column("sha256")
    for f, digest in m["files"].items():
        files.add_row(f, digest)
    out.print(files)
    return 0
