"""`streamer plan`: the budget before buying or building: FLOPs, bytes, bus traffic, memory and a
real-time verdict per GPU (planning/). Estimates, printed as such; `bench` measures."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.table import Table

from planning.report import plan_json

from .outputs import console, out


def add_plan_command(sub) -> None:
    plan = sub.add_parser("plan", help="will a preset run in real time on a GPU? FLOPs, bytes, bus, memory, verdict")
    plan.add_argument("--preset", default="base", help="tiny | small | base | large (default base)")
    plan.add_argument("--gpu", default="h100", help="a GPU of planning/gpus.toml: h100, h100-pcie, h200, a100, l40s, "
                                                    "l4, b200 (default h100)")
    plan.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "fp16", "fp8"],
                      help="the transformer stages' weights and KV cache (codecs stay fp32; default bf16)")
    plan.add_argument("--placement", default="one-gpu", choices=["one-gpu", "two-gpu", "two-process"])
    plan.add_argument("--json", type=Path, help="write the plan as JSON here")
    plan.set_defaults(func=cmd_plan)


def cmd_plan(args: argparse.Namespace) -> int:
    from model_src.config import get_preset
    from planning.budget import EFFICIENCY, LATENCY_GOAL_MS, REALTIME_GOAL_MS, make_plan

    p = get_preset(args.preset)
    plan = make_plan(p, args.gpu, args.precision, args.placement)
    gib, mb = 2**30, 1e6
    table = Table(title=f"{p.name} on {plan.gpu['name']}, {args.precision}, {args.placement}: per stage (estimates)")
    for col in ("stage", "worker", "calls/unit", "GFLOP/call", "GB/call", "weights GB", "cache GB", "roofline ms",
                "bound", "expected ms", "ms/unit"):
        table.add_column(col, justify="left" if col in ("stage", "worker", "bound") else "right")
    for s in plan.stages:
        c = s.cost
        table.add_row(c.name, s.worker, str(c.calls_per_unit), f"{c.flops / 1e9:,.0f}", f"{c.bytes / 1e9:.2f}",
                      f"{c.weight_bytes / 1e9:.2f}", f"{c.cache_bytes / 1e9:.2f}", f"{s.roofline_ms:.2f}", s.bound,
                      f"{s.expected_ms:.2f}", f"{s.per_unit_ms:.2f}")
    out.print(table)
    t, before = plan.traffic, plan.host_path_traffic
    out.print(f"bus per unit (the ledger's formula): h2d {t['h2d'] / mb:.2f} MB, d2h {t['d2h'] / mb:.2f} MB"
              + (f", GPU-to-GPU {t['peer'] / mb:.1f} MB" if t["peer"] else "")
              + f"; on the device {t['d2d'] / mb:.1f} MB. Host path (before): h2d {before['h2d'] / 1e9:.2f} GB, "
              f"d2h {before['d2h'] / 1e9:.2f} GB")
    mem = Table(title="memory per process (GiB)")
    for col in ("process", "weights", "KV cache", "codec states", "workspace (floor)", "total", f"of {plan.gpu['memory_gib']}"):
        mem.add_column(col, justify="left" if col == "process" else "right")
    for name, m in plan.memory.items():
        mem.add_row(name, *(f"{m[k] / gib:.2f}" for k in ("weights", "caches", "states", "workspace", "total")),
                    f"{100 * m['total'] / (plan.gpu['memory_gib'] * gib):.0f} %")
    out.print(mem)
    worst = plan.bottleneck()
    verdict = "REAL TIME" if plan.realtime else "NOT REAL TIME"
    headroom = REALTIME_GOAL_MS / plan.unit_ms if plan.unit_ms else float("inf")
    out.print(f"[bold]{verdict}[/]: {plan.unit_ms:.1f} ms of GPU time per {REALTIME_GOAL_MS:.0f} ms unit "
              f"({headroom:.2f}x headroom; " + ", ".join(f"{w} {ms:.1f} ms" for w, ms in plan.worker_ms.items())
              + f"), model-side latency {plan.latency_ms:.1f} ms (goal {LATENCY_GOAL_MS:.0f} ms)"
              + ("" if plan.fits else "; does NOT fit in memory")
              + f". First bottleneck: {worst.cost.name} ({worst.bound}-bound, {worst.per_unit_ms:.1f} ms per unit).")
    out.print(f"[dim]expected = roofline / efficiency ({EFFICIENCY['compute']:.0%} of peak FLOP/s, "
              f"{EFFICIENCY['memory']:.0%} of peak HBM, {EFFICIENCY['bus']:.0%} of the bus); peaks from "
              f"planning/gpus.toml ({plan.gpu['source']})[/]")
    if args.json:
        args.json.write_text(json.dumps(plan_json(plan), indent=1))
        console.print(f"wrote {args.json}")
    return 0

