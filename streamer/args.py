"""Argument types of the command line: each number is checked as it is parsed, and a bad one is refused
by argparse (exit code 2) with the range that was expected and the value that came."""
from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

MAX_UNITS = 3_780_000  # 7 days of 160 ms units: far past any session, far below an overflow
MAX_SEED = 2**63 - 1
MAX_TIMEOUT_S = 86_400.0


def cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def int_in(lo: int, hi: int | None = None, why: str = ""):
    """An argparse type: an integer in [lo, hi] (hi None: no upper bound; a callable: computed at parse time)."""
    def parse(text: str) -> int:
        top = hi() if callable(hi) else hi
        want = f"an integer in [{lo}, {top}]{why}" if top is not None else f"an integer >= {lo}{why}"
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}") from None
        if value < lo or (top is not None and value > top):
            raise argparse.ArgumentTypeError(f"expected {want}, got {value}")
        return value

    return parse


def seconds(text: str) -> float:
    """An argparse type: a finite number of seconds in (0, 86400]."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or not 0 < value <= MAX_TIMEOUT_S:
        raise argparse.ArgumentTypeError(f"expected seconds in (0, {MAX_TIMEOUT_S:g}], got {text!r}")
    return value


seed = int_in(0, MAX_SEED)
units = int_in(1, MAX_UNITS, " (units of 160 ms; at most 7 days)")
threads = int_in(1, cores, " (the CPU cores this process may use)")


def add_fit_args(parser: argparse.ArgumentParser) -> None:
    """--pad / --trim: what to do when the input's audio and video lengths differ (default: refuse)."""
    fit = parser.add_mutually_exclusive_group()
    fit.add_argument("--pad", dest="fit", action="store_const", const="pad",
                     help="audio and video of unequal length: fill the shorter (silence / its last frame)")
    fit.add_argument("--trim", dest="fit", action="store_const", const="trim",
                     help="audio and video of unequal length: cut both to the shorter")


def add_trust_arg(parser: argparse.ArgumentParser) -> None:
    """--trust PUBKEY: the engine directory must be signed with this Ed25519 key (docs/SECURITY.md)."""
    parser.add_argument("--trust", type=Path, metavar="PUBKEY",
                        help="refuse the engine directory unless it is signed with this Ed25519 public key "
                             "(`streamer keygen`, `streamer build --sign KEY`)")


PATH_ARGS = ("trust", "engines", "weights", "calibration", "init", "from_onnx", "sign")


def absolute_paths(args: argparse.Namespace) -> None:
    """Make the input-path options (--trust, --engines, --weights, --calibration, --init, --from-onnx,
    --sign) absolute against the working directory, in place, before any child process sees them
    (a performer or torchrun worker runs in another folder). Symlinks are not resolved here."""
    for name in PATH_ARGS:
        value = getattr(args, name, None)
        if isinstance(value, Path):
            setattr(args, name, Path(os.path.abspath(value)))
