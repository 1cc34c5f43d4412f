"""The commands that run built engines: `run --engines`, `bench`, `profile` (runtime/, no torch)."""
from __future__ import annotations

import json
import time

import numpy as np
from rich.table import Table

from .outputs import console, out, print_timings, read_input, write_outputs
from unitio.timing import percentiles, summarize
from unitio.units import UnitResult


def _session(args, mode: str):
    from runtime.session import EngineSession

    if getattr(args, "weights", None) is not None:
        raise ValueError("--weights goes with the torch backend; engines carry the weights they were built with")
    session = EngineSession(args.engines, seed=args.seed, expect_preset=getattr(args, "preset", None),
                            threads=args.threads, mode=mode, performer_timeout_s=args.performer_timeout,
                            performer_gpu=args.performer_gpu)
    backend = session.manifest["backend"]
    if getattr(args, "backend", None) not in (None, backend):
        session.close()
        raise ValueError(f"{args.engines} holds {backend} engines, but --backend {args.backend} was given")
    args.backend = backend
    return session


def run_engines(args) -> int:
    """`streamer run --engines DIR`: paced to wall time with --live, else as fast as it goes."""
    from rich.progress import Progress

    from runtime.live import LiveInput, replay, run_live

    mode = "sequential" if args.sequential else "pipelined"
    with _session(args, mode) as session:
        p = session.spec
        units = read_input(args.input, p, args.units, args.seed)
        outputs, results = [], []
        if args.live:
            source = LiveInput()
            t0 = time.perf_counter()
            replay(units, source, p.unit_ms / 1000.0, t0)
            console.print(f"live: {len(units)} units paced at {p.unit_ms:g} ms ({mode})")
            stats = run_live(session, source, len(units), outputs.append, t0)
            for k, tokens in enumerate(stats.tokens):
                results.append(UnitResult(k, tokens, None, None, {}))
            lat = percentiles(stats.latency_ms)
            console.print(f"model-side latency p50 {lat['p50']:.1f} / p90 {lat['p90']:.1f} / p99 {lat['p99']:.1f} ms; "
                          f"missing input {stats.missing}, late {stats.late}, rejected {stats.rejected}, "
                          f"units behind {stats.behind}")
        else:
            with Progress(console=console, transient=True) as bar:
                task = bar.add_task(f"streaming {len(units)} units ({p.name}, {args.backend}, {mode})", total=len(units))
                for audio, frames in units:
                    r = session.step(audio, frames)
                    results.append(r)
                    if r.audio is not None:
                        outputs.append(r)
                    bar.advance(task)
            outputs.append(session.flush())
    write_outputs(args.out, p, [o.audio for o in outputs], [o.frames for o in outputs], results)
    if not args.live:
        print_timings(summarize([r.timings_ms for r in results]), p.unit_ms, len(results))
    return 0


def bench(args) -> int:
    """`streamer bench`: sequential and pipelined side by side on the same input and seed."""
    from runtime.bench import bench_mode, timeline_png
    from runtime.manifest import read_manifest
    from runtime.spec import delta_nbytes, unit_spec

    if args.units < 2 or args.warmup < 0:
        raise ValueError(f"bench: expected --units >= 2 and --warmup >= 0, got {args.units} and {args.warmup}")
    spec = unit_spec(read_manifest(args.engines))
    units = read_input(args.input, spec, args.units + args.warmup, args.seed)
    results = []
    for mode in args.modes.split(","):
        console.print(f"bench: {mode}, {args.units} units (+{args.warmup} warm-up) of {spec.name} ...")
        results.append(bench_mode(args.engines, mode, units, args.seed, args.threads, args.warmup))
    table = Table(title=f"{args.engines} ({spec.name}): per unit, {args.units} units, {args.threads} thread(s) per worker")
    for col in ("mode", "unit p50", "p90", "p99", "latency p50", "p90", "p99", "RTF", "units/s",
                "thinker peak", "performer peak"):
        table.add_column(col, justify="left" if col == "mode" else "right")
    mib = lambda b: f"{b / 2**20:.0f} MiB" if b else "-"
    for r in results:
        u, lat = r["unit_ms"], r["latency_ms"]
        table.add_row(r["mode"], *(f"{u[c]:.1f}" for c in ("p50", "p90", "p99")),
                      *(f"{lat[c]:.1f}" for c in ("p50", "p90", "p99")), f"{r['rtf']:.3f}",
                      f"{r['units_per_s']:.2f}", mib(r["thinker_peak_rss"]), mib(r["performer_peak_rss"]))
    out.print(table)
    summary = {"engines": str(args.engines), "preset": spec.name, "threads": args.threads,
               "kv_delta_bytes": delta_nbytes(spec),
               "modes": [{k: v for k, v in r.items() if k not in ("spans", "tokens", "audio")} for r in results]}
    spans = results[-1]["spans"]
    transfer = {s: np.mean([1000 * (t1 - t0) for _, name, _, t0, t1 in spans if name == s]) for s in ("transfer", "append")
                if any(name == s for _, name, *_ in spans)}
    if len(results) == 2:
        a, b = results
        summary["throughput_ratio"] = b["units_per_s"] / a["units_per_s"]
        summary["bitwise_equal"] = bool(np.array_equal(a["tokens"], b["tokens"]) and np.array_equal(a["audio"], b["audio"]))
        out.print(f"{b['mode']} / {a['mode']} throughput: {summary['throughput_ratio']:.2f}x; outputs bitwise "
                  f"equal: {summary['bitwise_equal']}")
    if len(transfer) == 2:
        summary["kv_transfer_ms_per_unit"] = float(sum(transfer.values()))  # slot write + performer append
        out.print(f"KV delta {delta_nbytes(spec) / 2**10:.0f} KiB per unit; transfer (slot write + performer "
                  f"append) {summary['kv_transfer_ms_per_unit']:.3f} ms per unit")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    if args.timeline:
        timeline_png(results, args.timeline)
    if args.json or args.timeline:
        console.print("wrote " + ", ".join(str(p) for p in (args.json, args.timeline) if p))
    return 0


def profile(args) -> int:
    """`streamer profile`: a Chrome/Perfetto trace of every stage span of both workers (NVTX ranges too
    when a CUDA device is visible to torch)."""
    from runtime.bench import bench_mode
    from runtime.manifest import read_manifest
    from runtime.spec import unit_spec
    from runtime.trace import write_chrome_trace

    spec = unit_spec(read_manifest(args.engines))
    units = read_input(args.input, spec, args.units, args.seed)
    nvtx = _cuda_visible()
    mode = "sequential" if args.sequential else "pipelined"
    result = bench_mode(args.engines, mode, units, args.seed, args.threads, warmup=min(2, len(units) - 1), nvtx=nvtx)
    write_chrome_trace(result["spans"], args.out)
    console.print(f"wrote {args.out}: {len(result['spans'])} spans of {len(units)} units ({mode}"
                  f"{', with NVTX ranges' if nvtx else ''}); open it in ui.perfetto.dev or chrome://tracing")
    return 0


def _cuda_visible() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False
