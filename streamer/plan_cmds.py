"""`streamer plan`: the budget before buying or building: FLOPs, bytes, kernels, bus traffic, memory and a
real-time verdict per GPU, sessions per GPU (planning/). Estimates, printed as such; `bench` measures."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.table import Table

from planning.report import plan_json
from unitio.growing import write_text_replacing
from unitio.names import PLACEMENTS

from .outputs import console, out


def add_plan_command(sub) -> None:
    plan = sub.add_parser("plan", help="will a preset run in real time on a GPU? FLOPs, bytes, bus, memory, verdict")
    plan.add_argument("--preset", default="base", help="tiny | small | base | large (default base)")
    plan.add_argument("--gpu", default="h100", help="a GPU of planning/gpus.toml: h100, h100-pcie, h200, a100, l40s, "
                                                    "l4, b200 (default h100)")
    plan.add_argument("--precision", default="bf16", type=_precisions,
                      help="fp32 | bf16 | fp16 | fp8: the transformer stages' weights and KV cache (codecs stay fp32; "
                           "default bf16)")
    plan.add_argument("--placement", default="one-gpu", choices=list(PLACEMENTS))
    plan.add_argument("--no-graphs", action="store_true", help="price every kernel launch (no CUDA graphs)")
    plan.add_argument("--batch", type=int, metavar="B", help="plan B sessions per engine call (weights read once per "
                      "call) and print the largest B that holds real time and fits memory")
    plan.add_argument("--sessions", type=int, metavar="N", help="how many GPUs of this kind serve N concurrent sessions")
    plan.add_argument("--measured", type=Path, metavar="FILE", help="measured efficiencies ([measured.<gpu>] tables, "
                      "TOML or JSON; see planning/assumptions.py) in place of the defaults")
    plan.add_argument("--json", type=Path, help="write the plan as JSON here")
    plan.add_argument("--markdown", action="store_true", help="print docs/BENCHMARKS.md's plan tables (single session; "
                      "sessions per GPU) for every preset, GPU and precision given as comma lists")
    plan.set_defaults(func=cmd_plan)


def _precisions(text: str) -> str:
    for x in text.split(","):
        if x not in ("fp32", "bf16", "fp16", "fp8"):
            raise argparse.ArgumentTypeError(f"precision {x!r}: expected fp32, bf16, fp16 or fp8")
    return text


def cmd_plan(args: argparse.Namespace) -> int:
    from model_src.config import get_preset
    from planning.assumptions import load_measured
    from planning.batch import gpus_for, max_batch
    from planning.budget import make_plan

    measured = load_measured(args.measured) if args.measured else None
    graphs = not args.no_graphs
    if args.markdown:
        from .plan_tables import print_tables

        return print_tables(args.preset.split(","), args.gpu.split(","), args.precision.split(","), args.placement,
                            graphs, measured)
    p = get_preset(args.preset)
    if args.batch is not None and args.batch < 1:
        raise ValueError(f"--batch {args.batch}: expected at least 1 session per call")
    if args.sessions is not None and args.sessions < 1:
        raise ValueError(f"--sessions {args.sessions}: expected at least 1")
    plan = make_plan(p, args.gpu, args.precision, args.placement, graphs=graphs, batch=args.batch or 1,
                     measured=measured)
    _print_plan(plan)
    batch = None
    if args.batch is not None or args.sessions is not None:
        b_max, best = max_batch(p, args.gpu, args.precision, args.placement, graphs=graphs, measured=measured)
        batch = {"b_max": b_max, "b_max_unit_ms": best.unit_ms if best else None,
                 "b_max_latency_ms": best.latency_ms if best else None}
        where = f"{plan.gpu['name']} ({args.precision}, {args.placement}{'' if graphs else ', no graphs'})"
        if b_max:
            out.print(f"[bold]sessions per call: at most B = {b_max}[/] on one {where} hold real time and fit "
                      f"memory ({best.unit_ms:.1f} ms per unit, latency {best.latency_ms:.1f} ms, "
                      f"{best.memory_per_gpu()['gpu' if args.placement != 'two-gpu' else 'thinker']['total'] / 2**30:.1f}"
                      f" GiB); B = {b_max + 1} does not (estimate)")
        else:
            out.print(f"[bold]sessions per call: none[/]: one session is not real time on {where}")
        if args.sessions is not None:
            n = gpus_for(args.sessions, b_max, args.placement)
            batch.update(sessions=args.sessions, gpus=n)
            out.print(f"[bold]{args.sessions} concurrent sessions: {n} x {plan.gpu['name']}[/] "
                      f"(ceil({args.sessions} / {b_max}){' x 2 GPUs per group' if args.placement == 'two-gpu' else ''};"
                      " estimate)")
    if args.json:
        write_text_replacing(args.json, json.dumps(plan_json(plan, batch), indent=1))
        console.print(f"wrote {args.json}")
    return 0


def _print_plan(plan) -> None:
    from planning.budget import LATENCY_GOAL_MS, REALTIME_GOAL_MS

    gib, mb = 2**30, 1e6
    b = f", {plan.batch} sessions per call" if plan.batch > 1 else ""
    table = Table(title=f"{plan.preset} on {plan.gpu['name']}, {plan.precision}, {plan.placement}, "
                        f"{'CUDA graphs' if plan.graphs else 'no graphs'}{b}: per stage (estimates)")
    for col in ("stage", "worker", "calls/unit", "GFLOP/call", "GB/call", "kernels/call", "whole-stage max ms",
                "sum of kernels ms", "bound", "launch ms", "expected ms", "ms/unit"):
        table.add_column(col, justify="left" if col in ("stage", "worker", "bound") else "right")
    for s in plan.stages:
        c = s.cost
        table.add_row(c.name, s.worker, str(c.calls_per_unit), f"{plan.batch * c.flops / 1e9:,.0f}",
                      f"{sum(q.bytes for q in s.parts) / 1e9:.2f}", str(c.launches), f"{s.whole_stage_ms:.2f}",
                      f"{s.roofline_ms:.2f}", s.bound, f"{s.launch_ms:.2f}", f"{s.expected_ms:.2f}", f"{s.per_unit_ms:.2f}")
    out.print(table)
    parts = Table(title="parts of each stage, per call: each kernel max(compute, memory), summed")
    for col in ("stage", "part", "kind", "kernels", "GFLOP", "GB", "bound", "roofline ms", "expected ms"):
        parts.add_column(col, justify="left" if col in ("stage", "part", "kind", "bound") else "right")
    for s in plan.stages:
        for q in s.parts:
            parts.add_row(s.cost.name, q.part, q.kind, str(q.kernels), f"{q.flops / 1e9:,.1f}", f"{q.bytes / 1e9:.3f}",
                          q.bound, f"{q.roofline_ms:.3f}", f"{q.expected_ms:.3f}")
    out.print(parts)
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
    assumptions = Table(title="assumptions")
    for col in ("figure", "value", "source"):
        assumptions.add_column(col)
    for row in plan.assumptions():
        assumptions.add_row(*row)
    out.print(assumptions)
    worst = plan.bottleneck()
    verdict = "REAL TIME" if plan.realtime else "NOT REAL TIME"
    headroom = REALTIME_GOAL_MS / plan.unit_ms if plan.unit_ms else float("inf")
    busiest = max(plan.resources_ms, key=plan.resources_ms.get)
    out.print(f"[bold]{verdict}[/]: sustained {plan.unit_ms:.1f} ms per {REALTIME_GOAL_MS:.0f} ms unit, the busiest "
              f"resource ({busiest}; {headroom:.2f}x headroom; "
              + ", ".join(f"{w} {ms:.1f} ms" for w, ms in plan.resources_ms.items()) + ")"
              + ("" if plan.fits else "; does NOT fit in memory")
              + f". First bottleneck: {worst.cost.name} ({worst.bound}-bound, {worst.per_unit_ms:.1f} ms per unit). "
              f"{plan.launches_per_unit} kernels per unit.")
    out.print(f"model-side latency {plan.latency_ms:.1f} ms (goal {LATENCY_GOAL_MS:.0f} ms) = "
              + " + ".join(f"{k} {v:.1f}" for k, v in plan.latency_parts_ms.items())
              + " (no contention from the neighbouring units' work; the definition is in the assumptions)")
