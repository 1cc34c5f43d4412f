"""Measured efficiencies from a GPU run: bench/gpu_check.py's JSON -> a `[measured.<gpu>]` file that
`streamer plan --measured FILE` (or planning/gpus.toml) takes.

The headline session section times each phase of a unit (encode, think, flow, decode; p50 ms). Two
figures are fitted, each the efficiency at which the plan's time of those stages equals the measured
one (bisection; the plan's time falls as the efficiency rises):

    codec      <- encode + decode (audio_enc, video_enc, audio_dec, video_dec)
    attention  <- flow (flow_step x N: its attention is most of its time at base)

thinker_step is not fitted: its planned time with the fitted figures beside the measured one is the
check. A figure the measurement cannot reach (faster than the plan at 100 %, slower than at 1 %) is
clamped and said so in `notes`.

    python -m planning.measured gpu_check.json --out measured.toml
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from model_src.config import get_preset
from unitio.growing import write_text_replacing

from .budget import make_plan
from .count import count_stages

FITS = {"codec": (("encode", "decode"), ("audio_enc", "video_enc", "audio_dec", "video_dec")),
        "attention": (("flow",), ("flow_step",))}
LOW, HIGH = 0.01, 1.0


def fit_figure(p, gpu_key: str, precision: str, figure: str, stages: tuple[str, ...], measured_ms: float, *,
               graphs: bool = True, fixed: dict | None = None) -> tuple[float, str]:
    """(value, note): the efficiency `figure` at which the planned per-unit ms of `stages` equals
    measured_ms, the other figures at `fixed` (else the defaults); note is "" unless clamped."""
    costs = count_stages(p, precision)

    def planned(value: float) -> float:
        measured = {gpu_key: {**(fixed or {}), figure: value, "source": "fit"}}
        plan = make_plan(p, gpu_key, precision, graphs=graphs, measured=measured, costs=costs)
        return sum(s.per_unit_ms for s in plan.stages if s.cost.name in stages)

    if measured_ms <= planned(HIGH):
        return HIGH, f"{figure}: measured {measured_ms:.2f} ms is at or below the plan at 100 % ({planned(HIGH):.2f} ms)"
    if measured_ms >= planned(LOW):
        return LOW, f"{figure}: measured {measured_ms:.2f} ms is at or above the plan at 1 % ({planned(LOW):.2f} ms)"
    lo, hi = LOW, HIGH
    for _ in range(24):  # to ~6e-8
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if planned(mid) > measured_ms else (lo, mid)
    return (lo + hi) / 2, ""


def from_gpu_check(results: dict) -> tuple[str, dict, list[str]]:
    """(gpu key, its [measured] table, notes) from gpu_check.json's headline session section."""
    session = results.get("sections", {}).get("session", {})
    setup, plan, phases = session.get("setup"), session.get("plan") or {}, session.get("phase_ms")
    if not setup or not phases or "gpu_key" not in plan:
        raise ValueError("gpu_check.json: the session section has no setup, phase_ms or plan.gpu_key "
                         f"(status {session.get('status', 'missing')!r}): nothing measured to fit")
    p, precision, gpu_key = get_preset(setup["preset"]), setup["precision"], plan["gpu_key"]
    graphs = bool(session.get("cuda_graphs", True))
    table, notes = {}, []
    for figure, (phase_names, stages) in FITS.items():
        missing = [ph for ph in phase_names if "p50" not in phases.get(ph, {})]
        if missing:
            notes.append(f"{figure}: no p50 for phase {missing}: not fitted")
            continue
        value, note = fit_figure(p, gpu_key, precision, figure, stages, sum(phases[ph]["p50"] for ph in phase_names),
                                 graphs=graphs, fixed=table)
        table[figure] = round(value, 4)
        notes += [note] if note else []
    table["source"] = f"bench/gpu_check.py session section ({setup['preset']}, {precision}, {gpu_key}; phase p50s)"
    return gpu_key, table, notes


def to_toml(gpu_key: str, table: dict) -> str:
    """One `[measured.<gpu>]` table as TOML text."""
    lines = [f"[measured.{gpu_key}]"]
    for key, value in table.items():
        lines.append(f'{key} = "{value}"' if isinstance(value, str) else f"{key} = {value!r}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from unitio.jsonsafe import loads_bounded

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("check", type=Path, help="gpu_check.json")
    ap.add_argument("--out", type=Path, required=True, help="the [measured.<gpu>] TOML file to write")
    args = ap.parse_args(argv)
    try:
        gpu_key, table, notes = from_gpu_check(loads_bounded(args.check.read_text(), 64 << 20))
    except (OSError, ValueError) as e:
        print(f"planning.measured: {e}", file=sys.stderr)
        return 2
    write_text_replacing(args.out, to_toml(gpu_key, table))
    print(f"wrote {args.out}: " + ", ".join(f"{k} {v}" for k, v in table.items() if k != "source"))
    for n in notes:
        print(f"note: {n}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
