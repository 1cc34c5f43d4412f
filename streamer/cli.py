"""`streamer`: the deployment engineer's command line.

    streamer run       stream a clip (synthetic or WAV+MP4) through a session, write out.wav/out.mp4
    streamer card      the video for a recorded WAV: a coloured square while the person speaks (tiny-speech)
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
    streamer serve     live sessions over WebSocket (Ray Serve); `streamer client` streams a clip to it
    streamer train     the three training stages at tiny scale (codecs, backbone, distillation; torchrun-able)
    streamer eval      task metrics of held-out synthetic conversations, torch or any engine directory

This module is the parser and the dispatch: each command group registers its subcommands itself (the
`add_*` functions of its streamer/*_cmds.py, in COMMANDS). Heavy imports (torch, model_src) happen
inside the commands, so `streamer --help` is instant.
"""
from __future__ import annotations

import argparse
import os
import sys

from . import __version__
from . import args as types
from . import (bench_cmds, build_cmds, card_cmds, model_cmds, plan_cmds, quality_cmds, run_cmds, serve_cmds, train_cmds,
               trust_cmds)
from .errors import exit_code
from .signals import Terminated

# every command group, in the order `streamer --help` lists them
COMMANDS = (run_cmds.add_parsers, card_cmds.add_parsers, bench_cmds.add_parsers, model_cmds.add_parsers,
            build_cmds.add_build_command, trust_cmds.add_keygen_command, build_cmds.add_export_command,
            quality_cmds.add_parsers, plan_cmds.add_plan_command, serve_cmds.add_parsers, train_cmds.add_parsers,
            build_cmds.add_inspect_command)


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
    """The `streamer` parser, every command group's subcommands registered on it."""
    parser = argparse.ArgumentParser(prog="streamer", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


if __name__ == "__main__":
    sys.exit(main())
