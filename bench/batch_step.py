"""One batched step by phase, against a solo session's step: what batching buys per session on this
machine. Every row live, the synthetic clip, medians over the units after the first two.

    streamer build --preset tiny --backend ort --out /tmp/load/b1
    streamer build --preset tiny --backend ort --batch 4 --out /tmp/load/b4      # and --batch 2, 8, ...
    python bench/batch_step.py --solo /tmp/load/b1 --batched /tmp/load/b2 /tmp/load/b4 /tmp/load/b8

Prints a markdown table: rows, step ms, ms per row, and the thinker's encode / thinker_step / decode
(the performer's solve is the rest of the step).
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runtime.device.batch import BatchedSession  # noqa: E402
from runtime.host.session import EngineSession  # noqa: E402
from unitio.media import SyntheticUnits  # noqa: E402

PHASES = ("encode", "think", "decode")


def timed(obj, name: str, into: list) -> None:
    """Wrap obj.name so each call's wall time is appended to `into`."""
    f = getattr(obj, name)

    def wrapper(*a, **k):
        t = time.perf_counter()
        out = f(*a, **k)
        into.append(time.perf_counter() - t)
        return out

    setattr(obj, name, wrapper)


def ms(values) -> float:
    return 1000.0 * float(np.median(values[2:]))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--solo", type=Path, required=True, help="batch-1 engines")
    p.add_argument("--batched", type=Path, nargs="+", required=True, help="engines built with --batch B")
    p.add_argument("--units", type=int, default=12)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()

    print("| engines | rows | step ms | ms per row | encode | thinker_step | decode |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    with EngineSession(args.solo, mode="sequential", threads=args.threads) as s:
        units, steps = list(SyntheticUnits(s.spec, args.units, 0)), []
        for a, f in units:
            t = time.perf_counter()
            s.step(a, f)
            steps.append(time.perf_counter() - t)
    print(f"| {args.solo.name} (solo) | 1 | {ms(steps):.1f} | {ms(steps):.1f} | | | |")
    for d in args.batched:
        with BatchedSession(d, threads=args.threads) as b:
            phases = defaultdict(list)
            for name in PHASES:
                timed(b.thinker, name, phases[name])
            rows, steps = [b.join(seed=i) for i in range(b.rows)], []
            for a, f in units:
                t = time.perf_counter()
                b.step({r: (a, f, None) for r in rows})
                steps.append(time.perf_counter() - t)
            print(f"| {d.name} | {b.rows} | {ms(steps):.1f} | {ms(steps) / b.rows:.1f} | "
                  + " | ".join(f"{ms(phases[n]):.1f}" for n in PHASES) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
