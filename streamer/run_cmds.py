"""`streamer run`: a clip streamed through the torch reference session, or through the engines of
--engines (engine_cmds.py), outputs written unit by unit; and the session options `run`, `bench` and
`profile` share (--sequential, --performer-timeout, --placement, --device, --performer-device, --input)."""
from __future__ import annotations

import argparse
from pathlib import Path

from unitio.names import PLACEMENTS

from . import args as types
from .model_cmds import add_model_args, describe_weights, load_system
from .outputs import check_out_dir, console, print_timings, read_input, stream_session


def add_parsers(sub) -> None:
    """Register `run`."""
    run = sub.add_parser("run", help="stream a clip through a session and write the output")
    add_model_args(run)
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
    add_runtime_args(run)
    run.add_argument("--live", action="store_true", help="with --engines: pace to wall time, one unit per 160 ms")
    run.add_argument("--out", type=Path, required=True, help="output folder")
    run.set_defaults(func=cmd_run)


def add_input_args(parser: argparse.ArgumentParser) -> None:
    """--input, --seed, --pad/--trim, --trust: what bench and profile stream, on which engines."""
    parser.add_argument("--input", default="synthetic", help="'synthetic' or 'AUDIO.wav+VIDEO.mp4'")
    parser.add_argument("--seed", type=types.seed, default=0, help="seed of the synthetic input and the solver noise")
    types.add_fit_args(parser)
    types.add_trust_arg(parser)


def add_runtime_args(parser: argparse.ArgumentParser) -> None:
    """--sequential, --performer-timeout and the placement options: how a session on engines runs."""
    parser.add_argument("--sequential", action="store_true",
                        help="with --engines: one process, the reference order (default: thinker + performer pipelined)")
    parser.add_argument("--performer-timeout", type=types.seconds, default=None,
                        help="seconds without a result before the performer counts as hung (default: 10x a warm solve, >= 2 s)")
    add_placement_args(parser)


def add_placement_args(parser: argparse.ArgumentParser) -> None:
    """--placement, --device, --performer-device: where the device path runs (engines for a GPU)."""
    parser.add_argument("--placement", default=None, choices=list(PLACEMENTS),
                        help="the device path, state resident on the device: one-gpu (one process, two streams; "
                             "default for GPU engines), two-gpu (performer on a second GPU), two-process "
                             "(performer process on the same GPU, CUDA IPC; wants MPS)")
    parser.add_argument("--device", default=None,
                        help="the thinker's device for --placement (default cuda for GPU engines; cpu runs the "
                             "device path's logic on CPU engines)")
    parser.add_argument("--performer-device", default=None,
                        help="the performer's device with --placement two-gpu (default cuda:1)")


def say_engine_weights(args) -> None:
    """run/bench on engines: say which weights the engines were built from (their manifest's record)."""
    from runtime.manifest import read_manifest

    console.print(f"weights: {describe_weights(read_manifest(args.engines).get('weights', {}))} (built into {args.engines})")


def cmd_run(args) -> int:
    """`streamer run`: the torch reference session, or the engines of --engines (runtime/). Outputs are
    streamed to --out unit by unit (checked before the first unit)."""
    if args.engines is not None:
        from .engine_cmds import run_engines

        say_engine_weights(args)
        return run_engines(args)
    if args.backend not in (None, "torch"):
        raise ValueError(f"--backend {args.backend} needs --engines DIR (build them with `streamer build`)")
    if args.live or args.sequential or args.trust:
        raise ValueError("--live, --sequential and --trust go with --engines (the torch reference is always "
                         "sequential and loads no engines)")
    check_out_dir(args.out)
    import torch

    from model_src.config import get_preset
    from model_src.session import ReferenceSession
    from model_src.weights import read_preset

    if args.threads:
        torch.set_num_threads(args.threads)
    p = read_preset(args.weights) if args.weights else get_preset(args.preset or "tiny")
    units = read_input(args.input, p, args.units, args.seed, args.fit)  # checked before the model is built
    system = load_system(args.preset, args.weights, args.weights_seed)
    session = ReferenceSession(system, seed=args.seed)
    stream = stream_session(session.step, session.flush, units, args.out, p, f"({p.name}, torch)")
    print_timings(stream.timing_summary(), p.unit_ms, stream.units)
    return 0
