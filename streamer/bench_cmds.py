"""`streamer bench` and `streamer profile`: sessions on engines, measured side by side.

Modes are the host path's (sequential, pipelined: CPU engines) and the device path's placements
(one-gpu, two-gpu, two-process: state resident on the device; on "cpu" too, with --device cpu). Each
runs on the same input and seed; the table shows per-unit time, model-side latency, throughput,
memory and the bytes each unit moves per direction (the transfer ledger), and the JSON holds them
under "bytes_per_unit" ({"h2d", "d2h", "d2d"}) for every mode.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from rich.table import Table

from unitio.growing import write_text_replacing

from . import args as types
from .outputs import console, out, read_input
from .run_cmds import add_input_args, add_placement_args, say_engine_weights
from .trust_cmds import check_bench_outputs


def add_parsers(sub) -> None:
    """Register `bench` and `profile`."""
    bench = sub.add_parser("bench", help="sequential vs pipelined on engines: per-unit latency, throughput, memory")
    bench.add_argument("--engines", type=Path, required=True, help="engine directory")
    bench.add_argument("--units", type=types.int_in(2, types.MAX_UNITS), default=20, help="units counted (default 20)")
    bench.add_argument("--warmup", type=types.int_in(0, 1000), default=2, help="units run first and not counted (default 2)")
    bench.add_argument("--modes", default=None,
                       help="comma-separated of sequential, pipelined (host path, CPU engines), one-gpu, two-gpu, "
                            "two-process (device path) (default: sequential,pipelined on CPU engines, one-gpu on GPU ones)")
    add_placement_args(bench)
    bench.add_argument("--threads", type=types.threads, default=1, help="CPU threads per engine worker (default 1)")
    bench.add_argument("--json", type=Path, help="write the numbers as JSON here")
    bench.add_argument("--timeline", type=Path, help="write a PNG timeline of both workers here")
    add_input_args(bench)
    bench.set_defaults(func=cmd_bench, performer_timeout=None)

    prof = sub.add_parser("profile", help="Chrome/Perfetto trace of the stage spans of both workers")
    prof.add_argument("--engines", type=Path, required=True, help="engine directory")
    prof.add_argument("--units", type=types.int_in(2, types.MAX_UNITS), default=10, help="units to stream (default 10)")
    prof.add_argument("--threads", type=types.threads, default=1, help="CPU threads per engine worker (default 1)")
    prof.add_argument("--sequential", action="store_true", help="profile the sequential mode")
    add_placement_args(prof)
    prof.add_argument("--out", type=Path, required=True, help="trace JSON to write")
    add_input_args(prof)
    prof.set_defaults(func=cmd_profile)


def cmd_bench(args) -> int:
    """`streamer bench`: the output files and the signature checked first, then `bench`."""
    check_bench_outputs(args)
    say_engine_weights(args)
    return bench(args)


def cmd_profile(args) -> int:
    """`streamer profile`: the output file and the signature checked first, then `profile`."""
    check_bench_outputs(args)
    return profile(args)


def _modes(args, manifest: dict) -> list[str]:
    from runtime.open_session import HOWS, default_how

    if args.modes:
        modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    elif args.placement:
        modes = [args.placement]
    else:
        modes = ["sequential", "pipelined"] if default_how(manifest) == "pipelined" else ["one-gpu"]
    bad = [m for m in modes if m not in HOWS]
    if bad or not modes:
        raise ValueError(f"--modes: expected a comma-separated list of {list(HOWS)}, got {args.modes!r}")
    return modes


def bench(args) -> int:
    """`streamer bench`: every mode on the same input and seed, one after another."""
    from runtime.bench import bench_mode, timeline_png
    from runtime.manifest import read_manifest
    from runtime.spec import delta_nbytes, unit_spec

    if args.units < 2 or args.warmup < 0:
        raise ValueError(f"bench: expected --units >= 2 and --warmup >= 0, got {args.units} and {args.warmup}")
    if args.json is not None and args.json.is_dir():
        raise ValueError(f"--json {args.json}: expected a file to write, got a folder")
    manifest = read_manifest(args.engines, trust=getattr(args, "trust", None))
    spec, modes = unit_spec(manifest), _modes(args, manifest)
    units = list(read_input(args.input, spec, args.units + args.warmup, args.seed, getattr(args, "fit", None)))
    results = []
    for mode in modes:
        console.print(f"bench: {mode}, {args.units} units (+{args.warmup} warm-up) of {spec.name} ...")
        results.append(bench_mode(args.engines, mode, units, args.seed, args.threads, args.warmup,
                                  device=args.device, performer_device=args.performer_device,
                                  trust=getattr(args, "trust", None)))
    _print_table(args, spec, results)
    summary = {"engines": str(args.engines), "preset": spec.name, "threads": args.threads,
               "backend": manifest["backend"], "precision": manifest["precision"],
               "kv_delta_bytes": delta_nbytes(spec),
               "modes": [{k: v for k, v in r.items() if k not in ("spans", "tokens", "audio")} for r in results]}
    if len(results) >= 2:
        a, rest = results[0], results[1:]
        summary["throughput_ratio"] = {b["mode"]: b["units_per_s"] / a["units_per_s"] for b in rest}
        summary["bitwise_equal"] = {b["mode"]: bool(np.array_equal(a["tokens"], b["tokens"])
                                                    and np.array_equal(a["audio"], b["audio"])) for b in rest}
        for b in rest:
            out.print(f"{b['mode']} / {a['mode']} throughput: {summary['throughput_ratio'][b['mode']]:.2f}x; outputs "
                      f"bitwise equal: {summary['bitwise_equal'][b['mode']]}")
    for r in results:
        for note in r.get("notes", []):
            console.print(f"[yellow]note ({r['mode']}):[/] {note}")
    if args.json:
        write_text_replacing(args.json, json.dumps(summary, indent=1))
    if args.timeline:
        timeline_png(results, args.timeline)
    if args.json or args.timeline:
        console.print("wrote " + ", ".join(str(p) for p in (args.json, args.timeline) if p))
    return 0


def _print_table(args, spec, results: list[dict]) -> None:
    table = Table(title=f"{args.engines} ({spec.name}): per unit, {args.units} units, {args.threads} thread(s) per worker")
    for col in ("mode", "unit p50", "p90", "p99", "latency p50", "p99", "RTF", "units/s", "thinker peak",
                "performer peak", "h2d / unit", "d2h / unit", "d2d / unit"):
        table.add_column(col, justify="left" if col == "mode" else "right")
    mib = lambda b: f"{b / 2**20:.0f} MiB" if b else "-"  # noqa: E731
    kib = lambda b: f"{b / 2**10:.1f} KiB"  # noqa: E731
    for r in results:
        u, lat, b = r["unit_ms"], r["latency_ms"], r["bytes_per_unit"]
        peak = mib(r["thinker_peak_rss"]) + (f" + GPU {mib(r['gpu_peak_bytes'])}" if r.get("gpu_peak_bytes") else "")
        table.add_row(r["mode"], *(f"{u[c]:.1f}" for c in ("p50", "p90", "p99")),
                      *(f"{lat[c]:.1f}" for c in ("p50", "p99")), f"{r['rtf']:.3f}", f"{r['units_per_s']:.2f}",
                      peak, mib(r["performer_peak_rss"]), kib(b["h2d"]), kib(b["d2h"]), kib(b["d2d"]))
    out.print(table)


def profile(args) -> int:
    """`streamer profile`: a Chrome/Perfetto trace of every stage span of both workers (NVTX ranges too
    when the device path runs on a GPU)."""
    from runtime.bench import bench_mode
    from runtime.manifest import read_manifest
    from runtime.open_session import default_how
    from runtime.spec import unit_spec
    from runtime.trace import write_chrome_trace

    manifest = read_manifest(args.engines, trust=getattr(args, "trust", None))
    spec = unit_spec(manifest)
    units = list(read_input(args.input, spec, args.units, args.seed, getattr(args, "fit", None)))
    mode = args.placement or ("sequential" if args.sequential else default_how(manifest))
    nvtx = manifest["target"]["device"] == "cuda" or (args.device or "").startswith("cuda")
    result = bench_mode(args.engines, mode, units, args.seed, args.threads, warmup=min(2, len(units) - 1), nvtx=nvtx,
                        device=args.device, performer_device=args.performer_device, trust=getattr(args, "trust", None))
    write_chrome_trace(result["spans"], args.out)
    console.print(f"wrote {args.out}: {len(result['spans'])} spans of {len(units)} units ({mode}"
                  f"{', with NVTX ranges' if nvtx else ''}); open it in ui.perfetto.dev or chrome://tracing")
    return 0
