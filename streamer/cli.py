"""`streamer`: the deployment engineer's command line.

    streamer run       stream a clip (synthetic or WAV+MP4) through a session, write out.wav/out.mp4
    streamer presets   the presets' sizes and parameter counts
    streamer init-weights   a seeded random weights file for a preset (safetensors)
    streamer import-weights a weights file from local Qwen3 / Mimi / Wan2.1-VAE checkpoints
    streamer build     every stage to ONNX -> engines + manifest.json (--sign KEY: signed)
    streamer keygen    an Ed25519 key pair for signing engine directories (--trust PUBKEY checks them)
    streamer export    the checked ONNX of every stage + manifest (build the engines on the target GPU)
    streamer plan      FLOPs, bytes, bus traffic, memory and a real-time verdict for a preset on a GPU
    streamer verify    every engine against the torch reference
    streamer inspect   what an engine directory holds
    streamer calibrate record every stage's real inputs over a stream (for --precision int8/fp8)
    streamer bench     sequential vs pipelined thinker-performer on engines: latency, throughput, memory
    streamer profile   a Chrome/Perfetto trace of every stage span of both workers
    streamer train     the three training stages at tiny scale (codecs, backbone, distillation; torchrun-able)
    streamer eval      task metrics of held-out synthetic conversations, torch or any engine directory

Heavy imports (torch, model_src) happen inside the commands, so `streamer --help` is instant.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rich.table import Table

from . import __version__
from . import args as types
from .build_cmds import add_build_options
from .plan_cmds import add_plan_command
from .train_cmds import add_parsers as add_train_commands
from .errors import exit_code
from .outputs import check_out_dir, console, out, print_timings, read_input, stream_session
from .signals import Terminated
from .trust_cmds import add_keygen_command, check_bench_outputs, check_key_first, sign_if_asked, trusted


def main(argv: list[str] | None = None) -> int:
    """Run one command -> exit code: 0 done, 1 verify failed, 2 refused (bad input or arguments, an output
    that cannot be written), 3 performer failed, 130 Ctrl-C, 143 SIGTERM. Never a traceback for these."""
    os.environ["PYTHONSAFEPATH"] = "1"  # every child (resource tracker, torchrun/Ray workers): no cwd imports
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse's refusals (exit 2, message printed) and --help/--version (exit 0)
        return e.code if isinstance(e.code, int) else 2
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    types.absolute_paths(args)  # resolved once, here: a child started in another folder reads the same files
    try:
        return args.func(args) or 0
    except (Exception, KeyboardInterrupt, Terminated) as e:
        code = exit_code(e)  # streamer/errors.py: the message and the code; None for a bug
        if code is None:
            raise
        return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamer", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(metavar="COMMAND")

    run = sub.add_parser("run", help="stream a clip through a session and write the output")
    _add_model_args(run)
    run.add_argument("--backend", default=None, choices=["torch", "ort", "aoti", "trt"],
                     help="torch (eager reference) or the engines' backend (default: torch, or the engines')")
    run.add_argument("--engines", type=Path, help="engine directory from `streamer build` (runs on the engines)")
    run.add_argument("--input", default="synthetic", help="'synthetic' or 'AUDIO.wav+VIDEO.mp4' (24 kHz mono, 25 fps)")
    run.add_argument("--units", type=types.units, default=None, help="units of 160 ms to stream (default: 50 synthetic, all of a file)")
    run.add_argument("--seed", type=types.seed, default=0, help="seed of the synthetic input and the solver noise")
    run.add_argument("--threads", type=types.threads, default=None,
                     help="CPU threads: torch's, or per engine worker with --engines (default: the library's choice)")
    types.add_fit_args(run)
    types.add_trust_arg(run)
    _add_runtime_args(run)
    run.add_argument("--live", action="store_true", help="with --engines: pace to wall time, one unit per 160 ms")
    run.add_argument("--out", type=Path, required=True, help="output folder")
    run.set_defaults(func=cmd_run)

    bench = sub.add_parser("bench", help="sequential vs pipelined on engines: per-unit latency, throughput, memory")
    bench.add_argument("--engines", type=Path, required=True, help="engine directory")
    bench.add_argument("--units", type=types.int_in(2, types.MAX_UNITS), default=20, help="units counted (default 20)")
    bench.add_argument("--warmup", type=types.int_in(0, 1000), default=2, help="units run first and not counted (default 2)")
    bench.add_argument("--modes", default=None,
                       help="comma-separated of sequential, pipelined (host path, CPU engines), one-gpu, two-gpu, "
                            "two-process (device path) (default: sequential,pipelined on CPU engines, one-gpu on GPU ones)")
    _add_placement_args(bench)
    bench.add_argument("--threads", type=types.threads, default=1, help="CPU threads per engine worker (default 1)")
    bench.add_argument("--json", type=Path, help="write the numbers as JSON here")
    bench.add_argument("--timeline", type=Path, help="write a PNG timeline of both workers here")
    _add_input_args(bench)
    bench.set_defaults(func=cmd_bench, performer_timeout=None)

    prof = sub.add_parser("profile", help="Chrome/Perfetto trace of the stage spans of both workers")
    prof.add_argument("--engines", type=Path, required=True, help="engine directory")
    prof.add_argument("--units", type=types.int_in(2, types.MAX_UNITS), default=10, help="units to stream (default 10)")
    prof.add_argument("--threads", type=types.threads, default=1, help="CPU threads per engine worker (default 1)")
    prof.add_argument("--sequential", action="store_true", help="profile the sequential mode")
    _add_placement_args(prof)
    prof.add_argument("--out", type=Path, required=True, help="trace JSON to write")
    _add_input_args(prof)
    prof.set_defaults(func=cmd_profile)

    presets = sub.add_parser("presets", help="list the presets with their sizes and parameter counts")
    presets.set_defaults(func=cmd_presets)

    init = sub.add_parser("init-weights", help="write seeded random weights for a preset")
    init.add_argument("--preset", default="tiny")
    init.add_argument("--seed", type=types.seed, default=0)
    init.add_argument("--out", type=Path, required=True, help="output .safetensors file")
    init.set_defaults(func=cmd_init_weights)

    imp = sub.add_parser("import-weights", help="build a weights file from local upstream checkpoints "
                                                 "(Qwen3, Mimi, Wan2.1 VAE; safetensors only)")
    imp.add_argument("--preset", default="small")
    imp.add_argument("--qwen3", type=Path, help="transformers Qwen3 checkpoint folder -> backbone")
    imp.add_argument("--mimi", type=Path, help="transformers Mimi checkpoint (file or folder) -> audio VAE convs")
    imp.add_argument("--wan-vae", type=Path, help="diffusers AutoencoderKLWan checkpoint (file or folder) -> video VAE")
    imp.add_argument("--seed", type=types.seed, default=0, help="seed of every part not imported")
    imp.add_argument("--out", type=Path, required=True, help="output .safetensors file")
    imp.set_defaults(func=cmd_import_weights)

    build = sub.add_parser("build", help="export every stage to ONNX and build engines + manifest.json")
    _add_model_args(build)
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

    add_keygen_command(sub)

    exp = sub.add_parser("export", help="the checked ONNX of every stage + manifest, to build engines on the target GPU")
    _add_model_args(exp)
    add_build_options(exp)
    exp.add_argument("--out", type=Path, required=True, help="folder to write the ONNX export to")
    exp.set_defaults(func=cmd_export)

    verify = sub.add_parser("verify", help="check every engine against the torch reference")
    verify.add_argument("engines", type=Path, help="engine directory")
    verify.add_argument("--units", type=types.int_in(1, 1000), default=3, help="streamed units per stage (default 3)")
    verify.add_argument("--no-polygraphy", action="store_true", help="skip polygraphy's own comparison")
    verify.add_argument("--session", type=types.int_in(0, types.MAX_UNITS), default=0, metavar="N",
                        help="also stream N synthetic units through engines and torch: token diff, audio/frames SNR")
    verify.add_argument("--seed", type=types.seed, default=0, help="seed of the inputs")
    types.add_trust_arg(verify)

    cal = sub.add_parser("calibrate", help="record every stage's real inputs over a stream (for int8/fp8 builds)")
    _add_model_args(cal)
    cal.add_argument("--data", default="synthetic", help="'synthetic', 'AUDIO.wav+VIDEO.mp4', or a folder of NAME.wav + NAME.mp4 pairs")
    cal.add_argument("--units", type=types.units, default=32, help="units of 160 ms to record (default 32)")
    cal.add_argument("--seed", type=types.seed, default=0, help="seed of the synthetic input and the solver noise")
    types.add_fit_args(cal)
    cal.add_argument("--out", type=Path, required=True, help="calibration .safetensors to write")
    cal.set_defaults(func=cmd_calibrate)
    verify.set_defaults(func=cmd_verify)

    add_plan_command(sub)
    from .serve_cmds import add_parsers as add_serve_commands  # `serve`, `client` (issue 15)
    add_serve_commands(sub)
    add_train_commands(sub, _load_system)

    inspect = sub.add_parser("inspect", help="show what an engine directory holds")
    inspect.add_argument("engines", type=Path, help="engine directory")
    types.add_trust_arg(inspect)
    inspect.set_defaults(func=cmd_inspect)
    return parser


def _add_input_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", default="synthetic", help="'synthetic' or 'AUDIO.wav+VIDEO.mp4'")
    parser.add_argument("--seed", type=types.seed, default=0, help="seed of the synthetic input and the solver noise")
    types.add_fit_args(parser)
    types.add_trust_arg(parser)


def _add_runtime_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sequential", action="store_true",
                        help="with --engines: one process, the reference order (default: thinker + performer pipelined)")
    parser.add_argument("--performer-timeout", type=types.seconds, default=None,
                        help="seconds without a result before the performer counts as hung (default: 10x a warm solve, >= 2 s)")
    _add_placement_args(parser)


def _add_placement_args(parser: argparse.ArgumentParser) -> None:
    """--placement, --device, --performer-device: where the device path runs (engines for a GPU)."""
    parser.add_argument("--placement", default=None, choices=["one-gpu", "two-gpu", "two-process"],
                        help="the device path, state resident on the device: one-gpu (one process, two streams; "
                             "default for GPU engines), two-gpu (performer on a second GPU), two-process "
                             "(performer process on the same GPU, CUDA IPC; wants MPS)")
    parser.add_argument("--device", default=None,
                        help="the thinker's device for --placement (default cuda for GPU engines; cpu runs the "
                             "device path's logic on CPU engines)")
    parser.add_argument("--performer-device", default=None,
                        help="the performer's device with --placement two-gpu (default cuda:1)")


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    """--preset, --weights, --weights-seed: which model (shared by run and build)."""
    parser.add_argument("--preset", default=None,
                        help="tiny | small | base | large (default: the weights' preset, else tiny)")
    parser.add_argument("--weights", type=Path,
                        help="safetensors weights (default: the trained weights shipped for tiny, else seeded random)")
    parser.add_argument("--weights-seed", type=types.seed, default=None,
                        help="seeded random weights instead (tiny's default is its shipped trained weights)")


def _load_system(preset_name: str | None, weights: Path | None, seed: int | None):
    """The model: --weights FILE, else --weights-seed N (random), else the preset's shipped trained weights
    (tiny) or seed 0. Says which on the console; `system.weights_source` is what manifests record."""
    from model_src.config import get_preset
    from model_src.system import build_system
    from model_src.weights import embedded_weights, load_weights, read_preset
    from runtime.manifest import sha256

    from .train_cmds import describe_weights

    if weights is not None and seed is not None:
        raise ValueError("--weights and --weights-seed exclude each other (a file, or seeded random weights)")
    embedded = embedded_weights(preset_name or "tiny") if weights is None and seed is None else None
    if weights is not None or embedded is not None:
        path = weights if weights is not None else embedded
        preset = read_preset(path)
        if preset_name is not None and preset_name != preset.name:
            raise ValueError(f"weights file {path} was made for preset {preset.name!r}, "
                             f"but --preset {preset_name} was given")
        system = build_system(preset)
        load_weights(system, preset, path)
        system.weights_source = ({"embedded": preset.name, "sha256": sha256(path)} if weights is None
                                 else {"file": str(Path(path).resolve()), "sha256": sha256(path)})
    else:
        system = build_system(get_preset(preset_name or "tiny"), seed=seed or 0)
        system.weights_source = {"seed": seed or 0}
    console.print(f"weights: {describe_weights(system.weights_source)}")
    return system


def cmd_run(args) -> int:
    """`streamer run`: the torch reference session, or the engines of --engines (runtime/). Outputs are
    streamed to --out unit by unit (checked before the first unit)."""
    if args.engines is not None:
        from .engine_cmds import run_engines

        _say_engine_weights(args)
        return run_engines(args)
    if args.backend not in (None, "torch"):
        raise ValueError(f"--backend {args.backend} needs --engines DIR (build them with `streamer build`)")
    if args.live or args.sequential or args.trust:
        raise ValueError("--live, --sequential and --trust go with --engines (the torch reference is always "
                         "sequential and loads no engines)")
    check_out_dir(args.out)
    import torch

    from model_src.session import ReferenceSession

    from model_src.config import get_preset
    from model_src.weights import read_preset

    if args.threads:
        torch.set_num_threads(args.threads)
    p = read_preset(args.weights) if args.weights else get_preset(args.preset or "tiny")
    units = read_input(args.input, p, args.units, args.seed, args.fit)  # checked before the model is built
    system = _load_system(args.preset, args.weights, args.weights_seed)
    session = ReferenceSession(system, seed=args.seed)
    stream = stream_session(session.step, session.flush, units, args.out, p, f"({p.name}, torch)")
    print_timings(stream.timing_summary(), p.unit_ms, stream.units)
    return 0


def _say_engine_weights(args) -> None:
    """run/bench on engines: say which weights the engines were built from (their manifest's record)."""
    from runtime.manifest import read_manifest

    from .train_cmds import describe_weights

    console.print(f"weights: {describe_weights(read_manifest(args.engines).get('weights', {}))} (built into {args.engines})")


def cmd_bench(args) -> int:
    from .bench_cmds import bench

    check_bench_outputs(args)
    _say_engine_weights(args)
    return bench(args)


def cmd_profile(args) -> int:
    from .bench_cmds import profile

    check_bench_outputs(args)
    return profile(args)


def cmd_presets(args) -> int:
    from model_src.config import PRESETS
    from model_src.model import parameter_count
    from model_src.system import build_system

    table = Table(title="presets")
    for col in ("preset", "layers", "hidden", "heads q/kv", "frame", "tokens/unit", "flow tokens",
                "cache (units / tokens)", "parameters"):
        table.add_column(col, justify="right")
    for name, p in PRESETS.items():
        n = parameter_count(build_system(p, device="meta"))
        table.add_row(name, str(p.n_layers), str(p.hidden), f"{p.n_heads}/{p.n_kv_heads}",
                      f"{p.frame_height}x{p.frame_width}", str(p.tokens_per_unit), str(p.flow_tokens),
                      f"{p.cache_units} / {p.cache_capacity}", f"{n:,}")
    out.print(table)
    return 0


def cmd_init_weights(args) -> int:
    from model_src.config import get_preset
    from model_src.system import build_system
    from model_src.weights import save_weights

    p = get_preset(args.preset)
    save_weights(build_system(p, seed=args.seed), p, args.out)
    console.print(f"wrote {args.out} (preset {p.name}, seed {args.seed})")
    return 0


def cmd_build(args) -> int:
    from rich.progress import Progress

    from export.build import build

    check_key_first(args)
    if args.from_onnx is not None:
        from .build_cmds import build_from_export

        return build_from_export(args) or sign_if_asked(args)
    system = _load_system(args.preset, args.weights, args.weights_seed)
    weights = system.weights_source  # {"embedded": name, "sha256"}, {"file", "sha256"} or {"seed"}
    with Progress(console=console) as bar:
        task = bar.add_task(f"building {system.preset.name} ({args.backend}, {args.precision})", total=6)

        started: list[str] = []

        def on_stage(name: str) -> None:
            bar.update(task, description=f"exporting {name}", completed=len(started))
            started.append(name)

        manifest = build(system, args.out, args.backend, args.precision, weights, on_stage, args.device,
                         args.calibration, args.algorithm, args.attention, args.kv_cache, args.batch)
        bar.update(task, completed=6, description="done")
    console.print(f"wrote {len(manifest['stages'])} {args.backend} engines and manifest.json to {args.out}")
    return sign_if_asked(args)


def cmd_export(args) -> int:
    from .build_cmds import export

    return export(args, _load_system)


def cmd_verify(args) -> int:
    from .quality_cmds import verify

    trusted(args)
    return verify(args)


def cmd_calibrate(args) -> int:
    from .quality_cmds import calibrate

    return calibrate(args, _load_system)


def cmd_inspect(args) -> int:
    from .build_cmds import inspect

    return inspect(args)


def cmd_import_weights(args) -> int:
    from model_src.config import get_preset
    from model_src.system import build_system
    from model_src.weights import (
        load_mimi_checkpoint,
        load_qwen3_checkpoint,
        load_wan_vae_checkpoint,
        save_weights,
    )

    p = get_preset(args.preset)
    system = build_system(p, seed=args.seed)
    parts = [("backbone", args.qwen3, lambda path: load_qwen3_checkpoint(system.model.backbone, path)),
             ("audio VAE convs", args.mimi, lambda path: load_mimi_checkpoint(system.audio_vae, path)),
             ("video VAE", args.wan_vae, lambda path: load_wan_vae_checkpoint(system.video_vae, path))]
    for what, path, load in parts:
        if path is not None:
            load(path)
        console.print(f"{what}: {path if path else f'random (seed {args.seed})'}")
    console.print("random: modality embeddings, latent projections, flow heads"
                  + (", audio latent head" if args.mimi else ""))
    save_weights(system, p, args.out)
    console.print(f"wrote {args.out} (preset {p.name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
